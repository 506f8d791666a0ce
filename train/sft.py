"""Supervised fine-tuning: cross-entropy on assistant tokens only, padding-free batches.

* Labels come from :mod:`train.chat`: every assistant turn of a conversation (its content and
  end-of-turn token) is a target; system, user and tool turns and the chat headers are masked.
  This works with the model's own template, markers or not.
* A batch is one packed row with restarting ``position_ids`` (:mod:`train.packing`): no padding
  compute, sequences never attend to each other.
* The loss is the token-mean cross-entropy, normalised like transformers' own causal-LM loss
  (by the target tokens across gradient-accumulation micro-batches); the LM head only runs at
  positions that predict a target (``logits_to_keep``).

GPU: bf16 when supported, ``--gradient-checkpointing``, ``--deepspeed train/configs/zero3.json``
under ``accelerate launch``; flash-attention-2 understands the packed position ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import torch
from transformers import AutoModelForCausalLM, Trainer

from synth.chat import encode
from synth.engines.embedded import resolve_model
from train.common import check_model, console, load_tokenizer, pin_tensorboard_dir, write_metrics
from train.config import SFTConfig
from train.data import DatasetError, load_splits, validate_sft
from train.losses import segment_logps, token_logps_at
from train.packing import pack

IGNORE = -100


def tokenize_row(row: dict, tokenizer, max_length: int) -> dict:
    # tool-calling rows (``sft_tools``) carry their tools: rendered natively or by the fallback
    enc = encode(tokenizer, row["messages"], "sft", tools=row.get("tools")).truncate(max_length)
    return {"input_ids": enc.input_ids, "mask": enc.mask}


@dataclass
class PackedSFTCollator:
    """Rows -> one packed row with ``labels`` = input ids outside the mask set to -100."""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = pack([(r["input_ids"], r["mask"]) for r in rows])
        labels = batch["input_ids"].masked_fill(batch["mask"] == 0, IGNORE)
        return {
            "input_ids": batch["input_ids"],
            "position_ids": batch["position_ids"],
            "labels": labels,
        }


class SFTTrainer(Trainer):
    """``Trainer`` over raw chat rows (validated and tokenized here) with packed batches."""

    def __init__(self, model, args: SFTConfig, train_dataset, processing_class, eval_dataset=None, **kwargs):
        super().__init__(
            model=model,
            args=args,
            train_dataset=tokenize(train_dataset, processing_class, args.max_length),
            eval_dataset=eval_dataset and tokenize(eval_dataset, processing_class, args.max_length),
            processing_class=processing_class,
            data_collator=PackedSFTCollator(),
            **kwargs,
        )
        pin_tensorboard_dir(self)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Token-mean cross-entropy on targets; the LM head runs at target positions only.

        With ``num_items_in_batch`` (targets over all gradient-accumulation micro-batches and
        devices) the sum is divided by it, as transformers' own causal-LM loss does.
        """
        labels = inputs["labels"][0]
        targets = torch.nonzero(labels != IGNORE).squeeze(-1)  # never 0: pack() masks firsts
        logits = model(
            input_ids=inputs["input_ids"],
            position_ids=inputs["position_ids"],
            use_cache=False,
            logits_to_keep=targets - 1,
        ).logits[0]
        nll = -token_logps_at(logits, labels[targets]).sum()
        if num_items_in_batch is None:
            loss = nll / max(len(targets), 1)
        else:
            loss = nll / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, {"logits": logits}) if return_outputs else loss


def tokenize(ds: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    """Validated, tokenized conversations; every row keeps at least one target token."""
    validate_sft(ds)
    out = ds.map(
        tokenize_row,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
        remove_columns=ds.column_names,
        desc="tokenizing conversations",
    )
    empty = [i for i, m in enumerate(out["mask"]) if not any(m[1:])]
    if empty:
        raise DatasetError(f"rows {empty[:5]}: no assistant token left within max_length={max_length}")
    return out


@torch.no_grad()
def response_logprob(model, tokenizer, messages: list[dict]) -> float:
    """Mean log-prob per assistant token of a conversation (to check training moved it)."""
    enc = encode(tokenizer, messages, "sft")
    batch = pack([(enc.input_ids, enc.mask)])
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    total, count = segment_logps(logits, batch["input_ids"], batch["mask"], batch["segments"], 1)
    return (total / count).item()


def run(data: str, args: SFTConfig, model: str | None = None) -> dict:
    """Recipe: model check -> data -> validated conversations -> causal LM -> train -> save.
    Everything that can be checked without the weights is checked before they load."""
    check_model(model)
    train, test = load_splits(data, "sft")
    validate_sft(train)
    if test is not None:
        validate_sft(test)
    tokenizer = load_tokenizer(model)

    console.log(f"SFT of {model or 'embedded'} on {len(train)} conversations")
    policy = AutoModelForCausalLM.from_pretrained(resolve_model(model))

    trainer = SFTTrainer(policy, args, train, tokenizer, eval_dataset=test or None)
    result = trainer.train()
    trainer.save_model(args.output_dir)

    metrics = {"train": result.metrics}
    if trainer.eval_dataset is not None:
        metrics["eval"] = trainer.evaluate()
        console.log(f"held-out loss on assistant tokens: {metrics['eval']['eval_loss']:.4f}")
    write_metrics(args.output_dir, metrics)
    return metrics
