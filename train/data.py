"""Load and validate the datasets ``synth export`` writes, before any training starts.

Accepted inputs: an exported dataset folder (``load_dataset(DIR, "sft" | "preference")`` with
train/test splits, each one or more parquet shards), a folder with ``sft/`` and ``preference/``
subfolders of parquet/jsonl files (split taken from the file name prefix), or a single
.parquet/.jsonl file (train split only). Every problem found is reported as a :class:`DatasetError`
naming the row and its id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.json as pa_json

from synth.export import read_parquet
from synth.records import STRENGTHS

ROLES = ("system", "user", "assistant", "tool")
RANKS = ("edited", "chosen", "rejected")  # best first
SUFFIXES = (".parquet", ".jsonl", ".json")
MAX_REPORTED = 5


class DatasetError(ValueError):
    """The training data is unusable; the message names the problem and the row."""


def load_splits(
    path: str | Path, config: str, cache_dir: str | Path | None = None
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, test or None) of ``config`` ("sft" or "preference") at ``path``.

    Parquet is read memory-mapped through an Arrow cache in ``cache_dir`` (default: under the
    ``datasets`` cache; see :func:`synth.export.read_parquet`), so an export larger than RAM trains.
    """
    path = Path(path)
    if path.is_file():
        return _read([path], path, cache_dir), None
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or directory")
    # An exported folder is read file by file, not through load_dataset: datasets keys its cache by
    # folder name and relative paths, so round_1/data/sft and round_2/data/sft would collide.
    root = path / config if (path / config).is_dir() else path
    files = sorted(f for f in root.iterdir() if f.suffix in SUFFIXES)
    if not files:
        raise DatasetError(f"{root}: no .parquet/.jsonl files for the '{config}' data")
    train = [f for f in files if f.name.startswith("train")] or files
    test = [f for f in files if f.name.startswith("test")]
    test_ds = _read(test, root, cache_dir) if test else None
    return _read(train, root, cache_dir), test_ds if test_ds is not None and len(test_ds) else None


def _read(files: list[Path], where: Path, cache_dir: str | Path | None) -> datasets.Dataset:
    """Parquet memory-mapped, every shard in order; jsonl (hand-written, small) in memory."""
    kinds = {f.suffix for f in files}
    if kinds == {".parquet"}:
        return read_parquet(files, cache_dir=cache_dir)
    if kinds <= {".jsonl", ".json"}:
        tables = [pa_json.read_json(f) for f in files]
        return datasets.Dataset(pa.concat_tables(tables, promote_options="default"))
    raise DatasetError(f"{where}: mixed file types {sorted(kinds)}; use one format")


# -- validation ---------------------------------------------------------------------------


def _require_columns(ds: datasets.Dataset, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DatasetError(
            f"{what} data is missing column(s) {missing} (has {ds.column_names}); "
            "expected the layout `synth export` writes"
        )


def _check_messages(value: Any, field: str, *, single_assistant: bool = False) -> str | None:
    """A problem with a message list, or None."""
    if not isinstance(value, list):
        return f"'{field}' must be a list of {{role, content}} messages, got {type(value).__name__}"
    if not value:
        return f"'{field}' is empty"
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not {"role", "content"} <= set(m):
            return f"'{field}'[{j}] is not a {{role, content}} message"
        if m["role"] not in ROLES:
            return f"'{field}'[{j}] has unknown role {m['role']!r} (expected one of {ROLES})"
        if not isinstance(m["content"], str) or not m["content"].strip():
            return f"'{field}'[{j}] ({m['role']}) has empty content"
    if single_assistant and (len(value) != 1 or value[0]["role"] != "assistant"):
        return f"'{field}' must hold exactly one assistant message"
    return None


def _raise(problems: list[str], what: str) -> None:
    if problems:
        more = len(problems) - MAX_REPORTED
        lines = problems[:MAX_REPORTED] + ([f"... and {more} more"] if more > 0 else [])
        raise DatasetError(f"bad {what} data:\n  " + "\n  ".join(lines))


def _where(i: int, row: dict) -> str:
    return f"row {i} (id={row.get('id', '?')!r})"


def validate_sft(ds: datasets.Dataset) -> None:
    """Every row has a valid conversation with at least one assistant turn."""
    _require_columns(ds, ("messages",), "sft")
    problems = []
    for i, row in enumerate(ds):
        problem = _check_messages(row["messages"], "messages")
        if problem is None and not any(m["role"] == "assistant" for m in row["messages"]):
            problem = "'messages' has no assistant turn to train on"
        if problem:
            problems.append(f"{_where(i, row)}: {problem}")
    _raise(problems, "sft")


def responses(row: dict) -> list[tuple[str, dict]]:
    """The row's ranked responses, best first: [("edited", msg)?, ("chosen", msg), ("rejected", msg)]."""
    return [(rank, row[rank][0]) for rank in RANKS if row.get(rank)]


def validate_preference(ds: datasets.Dataset) -> None:
    """Valid prompt and responses, known strength, and responses that differ from each other."""
    _require_columns(ds, ("prompt", "chosen", "rejected"), "preference")
    problems = []
    for i, row in enumerate(ds):
        problem = _check_messages(row["prompt"], "prompt")
        if problem is None and row["prompt"][-1]["role"] == "assistant":
            problem = "'prompt' ends with an assistant turn; it must end before the response"
        for rank in RANKS:
            if problem is None and (rank != "edited" or row.get("edited")):
                problem = _check_messages(row[rank], rank, single_assistant=True)
        if problem is None:
            ranked = responses(row)
            for a in range(len(ranked)):
                for b in range(a + 1, len(ranked)):
                    if ranked[a][1]["content"].strip() == ranked[b][1]["content"].strip():
                        problem = f"'{ranked[a][0]}' and '{ranked[b][0]}' are the same response"
        strength = row.get("strength")
        if problem is None and strength is not None and strength not in STRENGTHS:
            problem = f"unknown strength {strength!r} (expected one of {STRENGTHS} or null)"
        if problem:
            problems.append(f"{_where(i, row)}: {problem}")
    _raise(problems, "preference")


def keep_strengths(ds: datasets.Dataset, drop: tuple[str, ...]) -> datasets.Dataset:
    """Drop rows whose chosen is not clearly better (Llama 2/3 drop "marginally_better")."""
    if not drop or "strength" not in ds.column_names:
        return ds
    return ds.filter(lambda s: s not in drop, input_columns="strength")
