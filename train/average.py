"""Checkpoint averaging (Llama 3: models from runs over different data or hyperparameters are averaged
at each RM, SFT and DPO stage).

``average_checkpoints`` takes folders of one architecture (``model.safetensors`` or sharded
``model-0000x-of-0000n.safetensors`` with ``model.safetensors.index.json``) and writes their uniform or
weighted mean. Tensors are read one at a time (safetensors is memory-mapped), accumulated in fp32 and
written in the first checkpoint's dtype, in the first checkpoint's shard layout; config, tokenizer and
generation files are copied from the first checkpoint, and ``average.json`` records the sources and
weights. Tied weights: a tensor that only some checkpoints store and that equals another tensor of its
checkpoint (e.g. ``lm_head.weight`` saved next to the embedding it is tied to) is a duplicate and is
left out, as ``save_pretrained`` does. Integer tensors (buffers) must be equal and are copied.

Every problem is an :class:`AverageError` (one line) raised before the output folder appears: a
corrupt safetensors file, an index that is not JSON or names a shard that is missing or lacks the
tensor, and a NaN or infinite weight in an input (averaging would spread it; ``allow_nan`` averages
anyway).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# files of a training run that do not describe the averaged model
SKIP_FILES = {INDEX, "trainer_state.json", "training_args.bin", "metrics.json", "average.json"}
SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf")


class AverageError(ValueError):
    """The checkpoints cannot be averaged (different architecture, keys or shapes)."""


class Checkpoint:
    """A safetensors checkpoint folder: key -> shard file, read lazily."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._files: dict[str, object] = {}
        if (self.path / INDEX).is_file():
            self.weight_map: dict[str, str] = self._read_index()
            for name in sorted(set(self.weight_map.values())):
                keys = set(self._file(name).keys())
                absent = sorted(k for k, shard in self.weight_map.items() if shard == name and k not in keys)
                if absent:
                    raise AverageError(
                        f"{self.path / INDEX}: shard {name} lacks {absent[:3]} it is said to hold"
                    )
        elif (self.path / SINGLE).is_file():
            self.weight_map = dict.fromkeys(self._file(SINGLE).keys(), SINGLE)
        elif self.path.is_dir():
            raise AverageError(f"{self.path}: no {SINGLE} or {INDEX} (only safetensors checkpoints are read)")
        else:
            raise AverageError(f"{self.path}: not a checkpoint folder")
        config = self.path / "config.json"
        try:
            self.config = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AverageError(f"{config}: not valid JSON ({err})") from None

    def _read_index(self) -> dict[str, str]:
        path = self.path / INDEX
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AverageError(f"{path}: not valid JSON ({err})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise AverageError(f"{path}: no 'weight_map' of tensor name -> shard file")
        for name in sorted(set(weight_map.values())):
            if Path(name).name != name or not (self.path / name).is_file():
                raise AverageError(f"{path}: names shard {name!r}, which is not in {self.path}")
        return dict(weight_map)

    def _file(self, name: str):
        if name not in self._files:
            try:
                self._files[name] = safe_open(self.path / name, framework="pt")  # memory-mapped
            except (SafetensorError, OSError) as err:
                raise AverageError(f"{self.path / name}: not a readable safetensors file ({err})") from None
        return self._files[name]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file(self.weight_map[key]).get_slice(key).get_shape())

    def tensor(self, key: str) -> torch.Tensor:
        try:
            return self._file(self.weight_map[key]).get_tensor(key)
        except (SafetensorError, OSError) as err:
            raise AverageError(f"{self.path / self.weight_map[key]}: cannot read '{key}' ({err})") from None


def parse_weights(text: str | None, n: int) -> list[float] | None:
    """'0.5,0.3,0.2' -> [0.5, 0.3, 0.2] (None stays None: uniform)."""
    if text is None or not text.strip():
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError as err:
        raise AverageError(f"--weights must be comma-separated numbers, got {text!r}") from err
    if len(weights) != n:
        raise AverageError(f"{len(weights)} weights for {n} checkpoints")
    return weights


def normalized(weights: Sequence[float] | None, n: int) -> list[float]:
    """Non-negative weights scaled to sum to 1 (uniform when None)."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise AverageError(f"{len(weights)} weights for {n} checkpoints")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise AverageError(f"weights must be non-negative with a positive sum, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def _check_configs(ckpts: list[Checkpoint]) -> None:
    first = ckpts[0]
    for c in ckpts[1:]:
        for field in ("architectures", "model_type"):
            a, b = first.config.get(field), c.config.get(field)
            if a is not None and b is not None and a != b:
                raise AverageError(
                    f"different architectures: {first.path} has {field}={a}, {c.path} has {field}={b}"
                )


def _tied_duplicate(ckpt: Checkpoint, key: str, common: set[str]) -> bool:
    t = ckpt.tensor(key)
    return any(
        ckpt.shape(other) == tuple(t.shape) and torch.equal(ckpt.tensor(other), t)
        for other in sorted(common)
        if other != key
    )


def _common_keys(ckpts: list[Checkpoint]) -> set[str]:
    """Keys every checkpoint has; extra keys must be tied duplicates, else the keys differ."""
    common = set.intersection(*(set(c.weight_map) for c in ckpts))
    for c in ckpts:
        extra = set(c.weight_map) - common
        bad = sorted(k for k in extra if not _tied_duplicate(c, k, common))
        if bad:
            others = next(o for o in ckpts if o is not c)
            raise AverageError(
                f"different parameters: {c.path} has {bad[:5]}{' ...' if len(bad) > 5 else ''} "
                f"that {others.path if len(ckpts) == 2 else 'another checkpoint'} lacks"
            )
    for key in sorted(common):
        shapes = [c.shape(key) for c in ckpts]
        if len(set(shapes)) > 1:
            detail = ", ".join(f"{c.path}: {list(s)}" for c, s in zip(ckpts, shapes, strict=True))
            raise AverageError(f"shape mismatch for '{key}': {detail}")
    return common


def _mean(ckpts: list[Checkpoint], weights: list[float], key: str, allow_nan: bool = False) -> torch.Tensor:
    first = ckpts[0].tensor(key)
    if not (first.is_floating_point() or first.is_complex()):
        for c in ckpts[1:]:
            if not torch.equal(c.tensor(key), first):
                raise AverageError(f"integer tensor '{key}' differs between checkpoints; cannot average it")
        return first.clone()
    acc = torch.zeros(first.shape, dtype=torch.float32 if first.is_floating_point() else torch.complex64)
    for c, w in zip(ckpts, weights, strict=True):
        t = c.tensor(key)
        if not allow_nan and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise AverageError(
                f"{c.path}: '{key}' has {bad} NaN/inf value(s); a broken run? (--allow-nan averages anyway)"
            )
        acc.add_(t.to(acc.dtype), alpha=w)
    return acc.to(first.dtype).contiguous()


def _copy_side_files(src: Path, dst: Path) -> None:
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in SKIP_FILES and not f.name.endswith(SKIP_SUFFIXES):
            shutil.copy2(f, dst / f.name)


def average_checkpoints(
    paths: Sequence[str | Path],
    out: str | Path,
    weights: Sequence[float] | None = None,
    allow_nan: bool = False,
) -> Path:
    """Write the (weighted) mean of ``paths`` to ``out``; returns ``out``.

    ``weights`` (one per checkpoint, non-negative) are normalised to sum to 1; None means uniform.
    Raises ``AverageError`` when the checkpoints differ in architecture, parameter names or shapes,
    cannot be read, or (unless ``allow_nan``) hold a NaN or infinite weight; ``out`` is then not
    created.
    """
    if len(paths) < 2:
        raise AverageError("averaging needs at least two checkpoints")
    out = Path(out)
    sources = [Path(p).resolve() for p in paths]
    if out.resolve() in sources:
        raise AverageError(f"--out {out} is one of the input checkpoints")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AverageError(f"{out} already exists and is not empty; choose a new folder")
    w = normalized(weights, len(paths))
    ckpts = [Checkpoint(p) for p in paths]
    _check_configs(ckpts)
    keys = _common_keys(ckpts)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shards: dict[str, list[str]] = {}
        for key in sorted(keys):  # the first checkpoint's shard layout
            shards.setdefault(ckpts[0].weight_map[key], []).append(key)
        weight_map, total = {}, 0
        for name in sorted(shards):
            tensors = {k: _mean(ckpts, w, k, allow_nan) for k in shards[name]}
            save_file(tensors, str(tmp / name), metadata={"format": "pt"})
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            weight_map.update(dict.fromkeys(tensors, name))
            del tensors
        if (ckpts[0].path / INDEX).is_file():
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        _copy_side_files(ckpts[0].path, tmp)
        record = {"checkpoints": [str(p) for p in sources], "weights": w}
        (tmp / "average.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
