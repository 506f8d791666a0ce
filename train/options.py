"""Options of ``synth train rm|sft|dpo``: one dataclass per command, the single source of its CLI
flags, its YAML keys (``--config``) and their help text.

Each class validates its ranges when built (``synth.config.Config``) and maps itself to the
:func:`train.run_recipe` call (``run()``), so the CLI, a YAML file and Python code train the same way::

    from synth.config import build
    build(SFTOptions, {"data": "export/", "out": "sft/", "max_steps": 10}).run()
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from synth.config import Config, ConfigError, option
from synth.records import STRENGTHS
from train import DPO_DROP_STRENGTHS, MARGIN_CHOICES, RM_DROP_STRENGTHS

# torch, transformers and datasets load in run(): `synth train --help` stays fast


@dataclasses.dataclass(kw_only=True)
class TrainOptions(Config):
    """What every recipe shares: data, output, base model and the TrainingArguments we expose."""

    kind: ClassVar[str] = ""

    data: str = option(help="Exported dataset folder, or .jsonl/.parquet.")
    out: str = option(help="Output folder: model, tokenizer, metrics, runs.")
    model: str = option("embedded", "Base model: local path, hub name or 'embedded'.")
    epochs: float = option(1.0, "Training epochs (a fraction trains part of one).", min=0, max=1000)
    lr: float = option(1e-5, "Peak learning rate.", gt=0, max=1)
    batch_size: int = option(4, "Rows per device per step.", min=1, max=65536)
    grad_accum: int = option(1, "Gradient accumulation steps.", min=1, max=65536)
    max_length: int = option(1024, "Tokens per sequence.", min=16, max=1_048_576)
    max_steps: int = option(-1, "Stop after this many steps (-1: run the epochs).", min=-1)
    gradient_checkpointing: bool = option(False, "Activation checkpointing (saves GPU memory).")
    deepspeed: str | None = option(None, "DeepSpeed JSON, e.g. train/configs/zero2.json.")
    logging_steps: int = option(10, "Log every N steps.", min=1)
    seed: int = option(42, "Random seed.", min=0, max=2**32 - 1)

    def recipe_config(self) -> dict[str, Any]:
        """The recipe's config fields (``train.config.*Config``) these options set."""
        return {
            "output_dir": str(self.out),
            "num_train_epochs": self.epochs,
            "learning_rate": self.lr,
            "per_device_train_batch_size": self.batch_size,
            "per_device_eval_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "max_length": self.max_length,
            "max_steps": self.max_steps,
            "activation_checkpointing": self.gradient_checkpointing,
            "deepspeed": str(self.deepspeed) if self.deepspeed else None,
            "logging_steps": self.logging_steps,
            "seed": self.seed,
        }

    def recipe_call(self) -> tuple[str, str, str, dict[str, Any]]:
        """``(kind, data, model, config)``: the arguments of ``run_recipe`` for these options."""
        return self.kind, str(self.data), self.model, self.recipe_config()

    def run(self) -> dict:
        """Train; returns the recipe's metrics. Raises ``train.data.DatasetError`` on bad data."""
        from train import run_recipe

        kind, data, model, config = self.recipe_call()
        return run_recipe(kind, data, model, **config)


@dataclasses.dataclass(kw_only=True)
class _PreferenceOptions(TrainOptions):
    """What the trainers on preference rows share: which strengths they leave out (each subclass
    sets its Llama 3 default; an empty list trains on every row)."""

    drop_strengths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.drop_strengths = tuple(self.drop_strengths)
        unknown = [s for s in self.drop_strengths if s not in STRENGTHS]
        if unknown:
            raise ConfigError(
                f"drop_strengths: unknown strength(s) {unknown}; choose from {', '.join(STRENGTHS)}"
            )

    def recipe_config(self) -> dict[str, Any]:
        return {**super().recipe_config(), "drop_strengths": tuple(self.drop_strengths)}


@dataclasses.dataclass(kw_only=True)
class RMOptions(_PreferenceOptions):
    """Reward model (Bradley-Terry, Llama 3: no margin); reports held-out accuracy per strength."""

    kind: ClassVar[str] = "rm"

    drop_strengths: tuple[str, ...] = option(
        RM_DROP_STRENGTHS,
        "Preference strengths left out of training (Llama 3: similar responses, i.e. marginally_better; "
        "'' keeps every row).",
    )
    margin: str = option(
        "none",
        "Margin by preference strength: none (Llama 3), small (Llama 2: 1, 0.66, 0.33, 0) or "
        "large (Llama 2: 3, 2, 1, 0).",
        choices=MARGIN_CHOICES,
    )
    concat: bool = option(False, "Llama 3: one row per prompt with all its responses.")

    def recipe_config(self) -> dict[str, Any]:
        return {**super().recipe_config(), "margin": self.margin, "concat_responses": self.concat}


@dataclasses.dataclass(kw_only=True)
class SFTOptions(TrainOptions):
    """Supervised fine-tuning on assistant turns, padding-free."""

    kind: ClassVar[str] = "sft"


@dataclasses.dataclass(kw_only=True)
class DPOOptions(_PreferenceOptions):
    """DPO with masked formatting tokens, NLL regulariser and a cached reference."""

    kind: ClassVar[str] = "dpo"

    drop_strengths: tuple[str, ...] = option(
        DPO_DROP_STRENGTHS,
        "Preference strengths left out of training (Llama 3 keeps only significantly_better and "
        "better; '' keeps every row).",
    )
    beta: float = option(0.1, "DPO temperature.", gt=0, max=100)
    nll_weight: float = option(0.2, "Weight of the chosen NLL term.", min=0, max=100)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.deepspeed and _zero_stage(self.deepspeed) == 3:
            raise ConfigError(
                "deepspeed: DPO computes its reference log-probs with the whole model in each process "
                "before training, and ZeRO-3 partitions the weights as they load: use ZeRO-2 "
                "(train/configs/zero2.json)"
            )

    def recipe_config(self) -> dict[str, Any]:
        return {**super().recipe_config(), "beta": self.beta, "nll_weight": self.nll_weight}


def _zero_stage(path: str) -> int | None:
    """The ZeRO stage of a DeepSpeed JSON; None when the file cannot be read (DeepSpeed says why)."""
    import json
    from pathlib import Path

    try:
        return int(json.loads(Path(path).read_text())["zero_optimization"]["stage"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


OPTIONS: dict[str, type[TrainOptions]] = {"rm": RMOptions, "sft": SFTOptions, "dpo": DPOOptions}
