"""DPO with Llama 3's changes: formatting tokens masked, NLL regulariser, cached reference.

* Formatting tokens masked: the log-probs of a response sum over its content tokens only;
  chat headers ("<|im_start|>assistant\\n"), end-of-turn (<|im_end|>) and every other special
  token are out of the loss (:mod:`train.chat`, mask kind "dpo"). They appear in both chosen and
  rejected, so DPO would push their likelihood both ways and destabilise training.
* NLL: ``loss = dpo + nll_weight * NLL(chosen) / len(chosen)`` (Llama 3: weight 0.2), over the
  same masked tokens. TRL spells this ``loss_type=["sigmoid", "sft"]`` with ``loss_weights``.
* Reference: the reference model is the initial policy, so its log-probs are computed in one
  no-grad pass before training and stored in the dataset as ``ref_chosen_logps`` /
  ``ref_rejected_logps``, with ``ref_model``: the fingerprint of what they were computed with
  (:func:`reference_fingerprint`: a hash of the reference's weights, the chat template, max_length,
  use_edited and the precision). A dataset that already has the columns skips the pass only when
  every row's ``ref_model`` is this run's fingerprint; otherwise (another model, or no record of
  one) the pass runs again. No second model is held in memory and every step is one forward of
  the policy over chosen and rejected packed in one row. (Under DeepSpeed each process computes
  the whole pass before sharding starts.)
* Rows: best response (edited when present and ``use_edited``, else chosen) vs rejected; only
  "significantly better" and "better" pairs by default, as Llama 3 (``drop_strengths``).

GPU: bf16 when supported, ``--gradient-checkpointing``, ``--deepspeed train/configs/zero2.json``
under ``accelerate launch``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass

import datasets
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, Trainer

from synth.chat import encode
from synth.engines.embedded import resolve_model
from train.common import check_model, console, load_tokenizer, pin_tensorboard_dir, write_metrics
from train.config import DPOConfig
from train.data import DatasetError, kept_or_fail, load_splits, validate_preference
from train.losses import dpo_loss, length_normalised_nll, packed_target_logps
from train.packing import pack

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
REF_MODEL = "ref_model"  # the fingerprint of what computed REF_COLUMNS


@torch.no_grad()
def reference_fingerprint(model, tokenizer, args: DPOConfig) -> str:
    """What cached reference log-probs depend on, hashed: every weight of the reference (the initial
    policy; names, dtypes, shapes and bytes), the chat template and vocabulary size, and the
    settings that change the pairs' tokens or the pass's precision. One pass over the weights,
    far cheaper than the reference pass it may save."""
    state = model.state_dict()
    if any(t.numel() == 0 for t in state.values()):  # partitioned (ZeRO-3): weights not at hand
        return f"unverifiable:{uuid.uuid4().hex}"  # matches no cache: the pass runs again
    h = hashlib.sha256()
    settings = (args.max_length, args.use_edited, bool(args.bf16), bool(args.fp16))
    h.update(f"{tokenizer.chat_template}|{len(tokenizer)}|{settings}".encode())
    for name, tensor in sorted(state.items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"|{name}:{t.dtype}:{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy())
    return "sha256:" + h.hexdigest()


def tokenize_row(row: dict, tokenizer, max_length: int, use_edited: bool) -> dict:
    best = row["edited"] if use_edited and row.get("edited") else row["chosen"]
    chosen = encode(tokenizer, [*row["prompt"], *best], "dpo").truncate(max_length)
    rejected = encode(tokenizer, [*row["prompt"], *row["rejected"]], "dpo").truncate(max_length)
    return {
        "chosen_ids": chosen.input_ids,
        "chosen_mask": chosen.mask,
        "rejected_ids": rejected.input_ids,
        "rejected_mask": rejected.mask,
    }


@dataclass
class DPOCollator:
    """Pairs -> one packed row: chosen sequences are segments 0..B-1, rejected B..2B-1."""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        seqs = [(r["chosen_ids"], r["chosen_mask"]) for r in rows]
        seqs += [(r["rejected_ids"], r["rejected_mask"]) for r in rows]
        batch = pack(seqs)
        for col in REF_COLUMNS:
            if col in rows[0]:
                batch[col] = torch.tensor([r[col] for r in rows], dtype=torch.float32)
        return batch


def pair_logps(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Summed masked log-probs and token counts of chosen and rejected, one forward."""
    segments = batch["segments"][0]
    n = int(segments.max()) + 1
    targets = torch.nonzero(batch["mask"][0]).squeeze(-1)  # never 0: pack() masks firsts
    logps = packed_target_logps(model, batch["input_ids"], batch["position_ids"], targets)
    seg = segments[targets]
    sums = logps.new_zeros(n).index_add(0, seg, logps)
    counts = torch.bincount(seg, minlength=n).to(logps.dtype)
    half = n // 2
    return {"chosen": sums[:half], "rejected": sums[half:], "chosen_tokens": counts[:half]}


class DPOTrainer(Trainer):
    """DPO over raw preference rows; no reference model at train time."""

    def __init__(self, model, args: DPOConfig, train_dataset, processing_class, **kwargs):
        self._metrics: dict[str, list[float]] = defaultdict(list)
        super().__init__(
            model=model,
            args=args,
            train_dataset=self.tokenize(train_dataset, processing_class, args),
            processing_class=processing_class,
            data_collator=DPOCollator(),
            **kwargs,
        )
        pin_tensorboard_dir(self)
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean
        self.ref_fingerprint = reference_fingerprint(self.model, processing_class, args)
        self.train_dataset = self.with_reference_logps(self.train_dataset)

    @staticmethod
    def tokenize(ds: datasets.Dataset, tokenizer, args: DPOConfig) -> datasets.Dataset:
        validate_preference(ds)
        kept = kept_or_fail(ds, tuple(args.drop_strengths))
        cached = [c for c in (*REF_COLUMNS, REF_MODEL) if c in kept.column_names]
        out = kept.map(
            tokenize_row,
            fn_kwargs={
                "tokenizer": tokenizer,
                "max_length": args.max_length,
                "use_edited": args.use_edited,
            },
            remove_columns=[c for c in kept.column_names if c not in cached],
            desc="tokenizing preference pairs",
        )
        for i, row in enumerate(out):
            for side in ("chosen", "rejected"):
                if not any(row[f"{side}_mask"][1:]):
                    raise DatasetError(
                        f"row {i}: no {side} response token left within max_length={args.max_length}"
                    )
        return out

    def with_reference_logps(self, ds: datasets.Dataset) -> datasets.Dataset:
        """``ds`` with reference log-probs: its own when every row records this run's reference
        fingerprint, else computed now (stale or unrecorded columns are replaced)."""
        columns = [c for c in (*REF_COLUMNS, REF_MODEL) if c in ds.column_names]
        if len(columns) == 3 and set(ds[REF_MODEL]) == {self.ref_fingerprint}:
            return ds
        if columns:
            why = "no record of their model" if REF_MODEL not in columns else "another reference model"
            console.log(f"the data's reference log-probs come from {why}: computing them again")
            ds = ds.remove_columns(columns)
        return self.add_reference_logps(ds)

    @torch.no_grad()
    def add_reference_logps(self, ds: datasets.Dataset) -> datasets.Dataset:
        """One no-grad pass of the initial policy (= the reference) over every pair."""
        model = self.model
        was_training = model.training
        model.eval()
        collate = DPOCollator()
        size = self.args.per_device_eval_batch_size
        chosen, rejected = [], []
        for start in tqdm(range(0, len(ds), size), desc="reference log-probs"):
            rows = list(ds.select(range(start, min(start + size, len(ds)))))
            batch = {k: v.to(self.args.device) for k, v in collate(rows).items()}
            with self.autocast_smart_context_manager():
                out = pair_logps(model, batch)
            chosen += out["chosen"].tolist()
            rejected += out["rejected"].tolist()
        model.train(was_training)
        ds = ds.add_column(REF_COLUMNS[0], chosen).add_column(REF_COLUMNS[1], rejected)
        return ds.add_column(REF_MODEL, [self.ref_fingerprint] * len(ds))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = pair_logps(model, inputs)
        loss, chosen_rewards, rejected_rewards = dpo_loss(
            out["chosen"],
            out["rejected"],
            inputs["ref_chosen_logps"],
            inputs["ref_rejected_logps"],
            self.args.beta,
        )
        nll = length_normalised_nll(out["chosen"], out["chosen_tokens"])
        if self.args.nll_weight:
            loss = loss + self.args.nll_weight * nll
        if model.training:
            self._record(chosen_rewards, rejected_rewards, nll)
        return (loss, out) if return_outputs else loss

    def _record(self, chosen_rewards, rejected_rewards, nll) -> None:
        self._metrics["rewards/chosen"].append(chosen_rewards.mean().item())
        self._metrics["rewards/rejected"].append(rejected_rewards.mean().item())
        self._metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        self._metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        self._metrics["nll"].append(nll.item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the DPO reward statistics averaged since the last log (TRL does the same)."""
        if "loss" in logs:
            logs.update({k: sum(v) / len(v) for k, v in self._metrics.items() if v})
            self._metrics.clear()
        super().log(logs, start_time)


def run(data: str, args: DPOConfig, model: str | None = None) -> dict:
    """Recipe: model check -> data -> validated pairs -> policy -> reference pass -> train -> save.
    Everything that can be checked without the weights is checked before they load."""
    check_model(model)
    train, _ = load_splits(data, "preference")
    validate_preference(train)
    kept_or_fail(train, tuple(args.drop_strengths))
    tokenizer = load_tokenizer(model)

    console.log(f"DPO of {model or 'embedded'} on {len(train)} preference rows")
    policy = AutoModelForCausalLM.from_pretrained(resolve_model(model))

    trainer = DPOTrainer(policy, args, train, tokenizer)
    result = trainer.train()
    trainer.save_model(args.output_dir)

    metrics = {"train": result.metrics}
    write_metrics(args.output_dir, metrics)
    return metrics
