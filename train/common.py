"""Bits every recipe shares: tokenizer loading, held-out splits, metrics output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
from rich.console import Console
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Trainer
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir

from synth.engines.embedded import resolve_model

console = Console(stderr=True)


def load_tokenizer(model: str | None) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token (eos when it has none; packing never pads anyway)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"{model}: the tokenizer has no chat template to format conversations")
    return tokenizer


def held_out(
    train: datasets.Dataset, test: datasets.Dataset | None, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The data's test split, else ``fraction`` of train (none when too small to matter)."""
    if (test is not None and len(test)) or fraction <= 0 or len(train) < 10:
        return train, test
    parts = train.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def write_metrics(out: str | Path, metrics: dict) -> Path:
    path = Path(out) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def pin_tensorboard_dir(trainer: Trainer) -> None:
    """Log under ``<output_dir>/runs`` even when evaluate() runs before train() (transformers
    would otherwise open its writer in ``./runs`` of the current directory)."""
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None:
            cb.logging_dir = os.path.join(trainer.args.output_dir, default_logdir())
