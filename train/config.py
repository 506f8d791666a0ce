"""Trainer configs: ``TrainingArguments`` plus each recipe's own knobs, TRL style.

Defaults follow Llama 3 where it says (lr 1e-5, DPO beta 0.1, NLL weight 0.2) and are set for a
single machine: TensorBoard logging under ``<output_dir>/runs``, no intermediate checkpoints, bf16
whenever CUDA supports it. Multi-GPU: ``accelerate launch -m train.cli ...`` with
``--deepspeed train/configs/zero2.json`` (or zero3.json) fills ``TrainingArguments.deepspeed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

# Llama 2's margins by preference strength (Touvron et al. 2023, table 28, "large" setting).
DEFAULT_MARGINS = {
    "significantly_better": 1.0,
    "better": 0.66,
    "slightly_better": 0.33,
    "marginally_better": 0.0,
}


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
    """Reward model: Bradley-Terry loss with Llama 2 margins, Llama 3 multi-response rows."""

    use_margin: bool = True
    margins: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MARGINS))
    drop_strengths: tuple[str, ...] = ("marginally_better",)
    concat_responses: bool = field(
        default=False,
        metadata={"help": "Llama 3: one forward per row over prompt + all ranked responses."},
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Held out for accuracy when the data has no test split."}
    )


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
    drop_strengths: tuple[str, ...] = ("marginally_better",)
