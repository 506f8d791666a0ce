"""Bits every recipe shares: model checks and tokenizer loading, held-out splits, metrics output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
from rich.console import Console
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Trainer
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir

from synth.engines.embedded import is_embedded, resolve_model

console = Console(stderr=True)


class ModelError(ValueError):
    """The base model cannot be used (missing folder, not a model); one line, raised before loading."""


def _looks_like_path(name: str) -> bool:
    """A name no hub id can be: absolute, relative with ./ ../ ~, or more than one '/'."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def check_model(model: str | None) -> None:
    """Fail fast, before any data is tokenized or weights load, on a model that is not there: a
    folder without config.json, a path that does not exist, or (offline) a hub id not in the cache."""
    if is_embedded(model):
        return
    path = Path(model).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise ModelError(f"--model {model}: not a model folder (no config.json)")
        return
    if _looks_like_path(model):
        raise ModelError(f"--model {model}: no such model folder")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(model, "config.json")
        except ValueError as err:  # not a valid repo id
            raise ModelError(f"--model {model}: no such model folder and not a hub id ({err})") from None
        if not isinstance(cached, str):
            raise ModelError(f"--model {model}: no such folder, and not in the Hugging Face cache (offline)")


def load_tokenizer(model: str | None) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token (eos when it has none; packing never pads anyway)."""
    check_model(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    except OSError as err:
        raise ModelError(f"--model {model}: cannot load its tokenizer: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelError(f"--model {model}: the tokenizer has no chat template to format conversations")
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
