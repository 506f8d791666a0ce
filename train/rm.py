"""Reward model: a causal LM with a scalar head, trained on ranked responses (Llama 2/3 recipe).

* Loss: Bradley-Terry ``-log sigmoid(r_c - r_r)``; Llama 3 removes Llama 2's margin term, which
  ``RMConfig.margin`` brings back: ``small`` (1, 2/3, 1/3, 0 by strength) or ``large`` (3, 2, 1, 0),
  Llama 2's table 28. Rows whose chosen is only marginally better (similar responses) are dropped.
* Rows with three ranked responses (edited > chosen > rejected) train on all three pairs
  (edited>chosen with margin 0: no strength was given for it; edited>rejected and
  chosen>rejected with the row's margin). Each response is encoded once, not once per pair.
* ``concat_responses`` (Llama 3): one sequence per row, prompt then every response, with an
  attention mask that lets each response see the prompt and itself only; its reward is read at
  its last token. Same rewards as separate rows (tested), prompt encoded once. Needs an attention
  implementation that takes a 4D mask (sdpa or eager, not flash-attention-2).
* The reward is the head's output at a sequence's last token, as
  ``AutoModelForSequenceClassification`` reads it at inference (pad_token_id is set).
* After training: pairwise accuracy on the held-out split, overall and per strength, printed and
  written to ``<out>/metrics.json``.

GPU: bf16 when supported, ``--gradient-checkpointing``, ``--deepspeed train/configs/zero2.json``
under ``accelerate launch``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import datasets
import torch
from rich.table import Table
from transformers import AutoModelForSequenceClassification, Trainer

from synth.chat import encode_prompt_responses
from synth.engines.embedded import resolve_model
from train.common import check_model, console, held_out, load_tokenizer, pin_tensorboard_dir, write_metrics
from train.config import RMConfig
from train.data import kept_or_fail, load_splits, responses, validate_preference
from train.losses import bradley_terry_loss
from train.packing import shared_prompt_mask


def tokenize_row(row: dict, tokenizer, max_length: int, margins: dict[str, float]) -> dict:
    """Prompt ids, each ranked response's ids, and the pairs (better, worse, margin, label)."""
    ranked = responses(row)
    prompt_ids, parts = encode_prompt_responses(tokenizer, row["prompt"], [m for _, m in ranked], "sft")
    prompt_ids = prompt_ids[: max_length - 1]
    room = max(1, max_length - len(prompt_ids))
    strength = row.get("strength")
    margin = margins.get(strength, 0.0) if strength else 0.0
    pairs = []
    for a in range(len(ranked)):
        for b in range(a + 1, len(ranked)):
            label = f"{ranked[a][0]}>{ranked[b][0]}"
            pairs.append((a, b, 0.0 if label == "edited>chosen" else margin, label))
    return {
        "prompt_ids": prompt_ids,
        "response_ids": [p.input_ids[:room] for p in parts],
        "pair_better": [p[0] for p in pairs],
        "pair_worse": [p[1] for p in pairs],
        "pair_margin": [p[2] for p in pairs],
        "pair_label": [p[3] for p in pairs],
        "strength": strength or "unlabelled",
    }


@dataclass
class RewardCollator:
    """Rows -> one packed row; ``ends`` index each response's last token, pairs index ``ends``."""

    concat_responses: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids, positions, ends, better, worse, margins, groups = [], [], [], [], [], [], []
        for row in rows:
            first = len(ends)
            prompt = row["prompt_ids"]
            if self.concat_responses:
                ids += prompt
                positions += range(len(prompt))
                groups.append([len(prompt)] + [len(r) for r in row["response_ids"]])
            for resp in row["response_ids"]:
                if not self.concat_responses:
                    ids += prompt
                    positions += range(len(prompt))
                ids += resp
                positions += range(len(prompt), len(prompt) + len(resp))
                ends.append(len(ids) - 1)
            better += [first + i for i in row["pair_better"]]
            worse += [first + i for i in row["pair_worse"]]
            margins += row["pair_margin"]
        batch = {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([positions]),
            "ends": torch.tensor(ends),
            "better": torch.tensor(better),
            "worse": torch.tensor(worse),
            "margins": torch.tensor(margins, dtype=torch.float32),
        }
        if self.concat_responses:
            batch["attention_mask"] = shared_prompt_mask(groups)
        return batch


def score_head(model: torch.nn.Module) -> torch.nn.Module:
    """The scalar head (``score``), looking through DDP/DeepSpeed/PEFT wrappers."""
    heads = [m for name, m in model.named_modules() if name.split(".")[-1] == "score"]
    if not heads:
        raise ValueError("the reward model has no 'score' head (use a *ForSequenceClassification)")
    return heads[-1]


def sequence_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head's output at each ``ends`` position (captured by a hook: the model itself only
    returns the score of the row's last token)."""
    captured = {}
    handle = score_head(model).register_forward_hook(lambda _m, _i, out: captured.__setitem__("scores", out))
    mask = batch.get("attention_mask")
    if mask is not None:
        mask = mask.to(next(model.parameters()).dtype)
    try:
        model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=mask,
            use_cache=False,
        )
    finally:
        handle.remove()
    return captured["scores"][0, batch["ends"], 0].float()


class RMTrainer(Trainer):
    """Bradley-Terry reward-model trainer over raw preference rows (validated here)."""

    def __init__(self, model, args: RMConfig, train_dataset, processing_class, **kwargs):
        validate_preference(train_dataset)
        kept = kept_or_fail(train_dataset, tuple(args.drop_strengths))
        self.tokenizer_ = processing_class
        train = self.tokenize(kept, args)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train,
            processing_class=processing_class,
            data_collator=RewardCollator(args.concat_responses),
            **kwargs,
        )
        pin_tensorboard_dir(self)
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def tokenize(self, ds: datasets.Dataset, args: RMConfig) -> datasets.Dataset:
        return ds.map(
            tokenize_row,
            fn_kwargs={
                "tokenizer": self.tokenizer_,
                "max_length": args.max_length,
                "margins": args.margin_table() or {},
            },
            remove_columns=ds.column_names,
            desc="tokenizing preference rows",
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rewards = sequence_rewards(model, inputs)
        margin = inputs["margins"] if self.args.margin_table() is not None else None
        chosen, rejected = rewards[inputs["better"]], rewards[inputs["worse"]]
        loss = bradley_terry_loss(chosen, rejected, margin)
        return (loss, {"chosen": chosen, "rejected": rejected}) if return_outputs else loss

    @torch.no_grad()
    def pairwise_accuracy(self, eval_dataset: datasets.Dataset) -> dict:
        """Share of held-out pairs ranked right, overall, per strength (chosen>rejected pairs)
        and for pairs with an edited response. Every strength is kept here."""
        validate_preference(eval_dataset)
        rows = self.tokenize(eval_dataset, self.args)
        collate = RewardCollator(concat_responses=False)
        hits: dict[str, list[int]] = defaultdict(list)
        model = self.model.eval()
        size = self.args.per_device_eval_batch_size
        for start in range(0, len(rows), size):
            chunk = rows.select(range(start, min(start + size, len(rows))))
            batch = {k: v.to(self.args.device) for k, v in collate(list(chunk)).items()}
            rewards = sequence_rewards(model, batch)
            right = (rewards[batch["better"]] > rewards[batch["worse"]]).tolist()
            labels = [(lab, row["strength"]) for row in chunk for lab in row["pair_label"]]
            for ok, (label, strength) in zip(right, labels, strict=True):
                hits["overall"].append(ok)
                hits[strength if label == "chosen>rejected" else "edited pairs"].append(ok)
        return {k: {"accuracy": sum(v) / len(v), "pairs": len(v)} for k, v in hits.items()}


def accuracy_table(metrics: dict) -> Table:
    table = Table(title="reward model: held-out pairwise accuracy")
    table.add_column("split")
    table.add_column("pairs", justify="right")
    table.add_column("accuracy", justify="right")
    for key, value in sorted(metrics.items(), key=lambda kv: kv[0] != "overall"):
        table.add_row(key, str(value["pairs"]), f"{value['accuracy']:.3f}")
    return table


def run(data: str, args: RMConfig, model: str | None = None) -> dict:
    """Recipe: data -> validated rows -> reward model -> train -> save -> held-out accuracy."""
    check_model(model)
    train, test = load_splits(data, "preference")
    validate_preference(train)
    if test is not None:
        validate_preference(test)
    train, test = held_out(train, test, args.eval_fraction, args.seed)
    kept_or_fail(train, tuple(args.drop_strengths))
    tokenizer = load_tokenizer(model)

    console.log(f"reward model from {model or 'embedded'}; {len(train)} training rows")
    rm = AutoModelForSequenceClassification.from_pretrained(resolve_model(model), num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id

    trainer = RMTrainer(rm, args, train, tokenizer)
    result = trainer.train()
    trainer.save_model(args.output_dir)

    metrics = {"train": result.metrics}
    if test is not None and len(test):
        metrics["eval"] = trainer.pairwise_accuracy(test)
        console.print(accuracy_table(metrics["eval"]))
    write_metrics(args.output_dir, metrics)
    return metrics
