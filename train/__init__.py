"""Trainers for synth data, after the Llama 3 post-training recipe: ``rm``, ``sft``, ``dpo``.

Each recipe module (:mod:`train.rm`, :mod:`train.sft`, :mod:`train.dpo`) holds a
``transformers.Trainer`` subclass plus a ``run()`` that reads top to bottom; configs are in
:mod:`train.config`, the CLI in :mod:`train.cli`, DeepSpeed ZeRO-2/3 JSON in ``train/configs/``.
"""

from __future__ import annotations

from typing import Any

RECIPES = ("rm", "sft", "dpo")

# Llama 2's two margin settings by preference strength (Touvron et al. 2023, table 28). Llama 3
# removes the margin term, so the reward model trains without one unless asked (``margin``).
LLAMA2_MARGINS: dict[str, dict[str, float]] = {
    "small": {
        "significantly_better": 1.0,
        "better": 2 / 3,
        "slightly_better": 1 / 3,
        "marginally_better": 0.0,
    },
    "large": {"significantly_better": 3.0, "better": 2.0, "slightly_better": 1.0, "marginally_better": 0.0},
}
MARGIN_CHOICES = ("none", *LLAMA2_MARGINS)
# Llama 3 trains the reward model on every strength but "similar responses" (marginally better), and
# DPO only on "significantly better" and "better" pairs.
RM_DROP_STRENGTHS = ("marginally_better",)
DPO_DROP_STRENGTHS = ("slightly_better", "marginally_better")


def run_recipe(kind: str, data: str, model: str | None, **config: Any) -> dict:
    """Train ``kind`` on ``data`` with its config built from ``config`` (TrainingArguments fields plus
    the recipe's own); returns the metrics. Heavy imports happen here, not when ``train`` loads."""
    import importlib

    from train import config as configs

    if kind not in RECIPES:
        raise ValueError(f"unknown recipe {kind!r}; choose one of {', '.join(RECIPES)}")
    config_cls = {"rm": configs.RMConfig, "sft": configs.SFTConfig, "dpo": configs.DPOConfig}[kind]
    return importlib.import_module(f"train.{kind}").run(str(data), config_cls(**config), model)
