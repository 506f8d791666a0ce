"""Trainer configs: ``TrainingArguments`` plus each recipe's own knobs, TRL style.

Defaults follow Llama 3 where it says (lr 1e-5, DPO beta 0.1, NLL weight 0.2, no margin term in the
reward model's loss, DPO on "significantly better" and "better" pairs only) and are set for a single
machine: TensorBoard logging under ``<output_dir>/runs``, no intermediate checkpoints, bf16
whenever CUDA supports it. Multi-GPU: ``accelerate launch -m train.cli ...`` with
``--deepspeed train/configs/zero2.json`` (or zero3.json) fills ``TrainingArguments.deepspeed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from train import DPO_DROP_STRENGTHS, LLAMA2_MARGINS, MARGIN_CHOICES, RM_DROP_STRENGTHS


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class TrainConfig(TrainingArguments):
    """What every recipe shares."""

    max_length: int = field(default=1024, metadata={"help": "Tokens per sequence (cut at the end)."})
    learning_rate: float = 1e-5
    logging_steps: float = 10
    report_to: str | list[str] | None = "tensorboard"
    save_strategy: str = "no"
    remove_unused_columns: bool = False  # our collators read our own columns
    prediction_loss_only: bool = True  # evaluation keeps no vocab-sized logits
    bf16: bool | None = field(default=None, metadata={"help": "None: on when CUDA has bf16."})

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bf16_available()
        super().__post_init__()


@dataclass
class RMConfig(TrainConfig):
    """Reward model: Bradley-Terry loss (Llama 3: no margin; Llama 2's as an option), Llama 3
    multi-response rows."""

    margin: str = field(
        default="none",
        metadata={"help": "Margin by strength: none (Llama 3), small or large (Llama 2, table 28)."},
    )
    margins: dict[str, float] | None = field(
        default=None, metadata={"help": "An explicit margin per strength; replaces `margin`'s table."}
    )
    drop_strengths: tuple[str, ...] = RM_DROP_STRENGTHS
    concat_responses: bool = field(
        default=False,
        metadata={"help": "Llama 3: one forward per row over prompt + all ranked responses."},
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Held out for accuracy when the data has no test split."}
    )

    def __post_init__(self):
        if self.margin not in MARGIN_CHOICES:
            raise ValueError(f"margin must be one of {', '.join(MARGIN_CHOICES)}, got {self.margin!r}")
        super().__post_init__()

    def margin_table(self) -> dict[str, float] | None:
        """The margin per strength the loss subtracts, or None (no margin term)."""
        if self.margins is not None:
            return dict(self.margins)
        return None if self.margin == "none" else dict(LLAMA2_MARGINS[self.margin])


@dataclass
class SFTConfig(TrainConfig):
    """SFT: cross-entropy on assistant tokens only, padding-free batches."""


@dataclass
class DPOConfig(TrainConfig):
    """DPO with Llama 3's formatting-token mask, NLL regulariser and cached reference."""

    learning_rate: float = 1e-5
    beta: float = 0.1
    nll_weight: float = field(
        default=0.2, metadata={"help": "Weight of the chosen response's per-token NLL."}
    )
    use_edited: bool = field(
        default=True, metadata={"help": "Use the edited response as chosen when a row has one."}
    )
    drop_strengths: tuple[str, ...] = DPO_DROP_STRENGTHS
