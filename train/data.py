"""Load and validate the datasets ``synth export`` writes, before any training starts.

Accepted inputs: an exported dataset folder (``load_dataset(DIR, "sft" | "preference")`` with
train/test splits, each one or more parquet shards), a folder with ``sft/`` and ``preference/``
subfolders of parquet/jsonl files (split taken from the file name prefix), or a single
.parquet/.jsonl file (train split only). Every problem found is reported as a :class:`DatasetError`
(one line) naming the file and line, or the row and its id: unreadable or mixed-type JSON lines, an
empty file, an unreadable parquet file, an empty train split (the export of a run that kept nothing).
"""

from __future__ import annotations

import json
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
    train_ds = _read(train, root, cache_dir)
    if len(train_ds) == 0:
        raise DatasetError(f"{root}: the '{config}' data has no training rows (an empty export?)")
    return train_ds, test_ds if test_ds is not None and len(test_ds) else None


def _read(files: list[Path], where: Path, cache_dir: str | Path | None) -> datasets.Dataset:
    """Parquet memory-mapped, every shard in order; jsonl (hand-written, small) in memory."""
    kinds = {f.suffix for f in files}
    if kinds == {".parquet"}:
        for f in files:
            if f.stat().st_size == 0:
                raise DatasetError(f"{f}: empty file (0 bytes), not parquet")
        try:
            return read_parquet(files, cache_dir=cache_dir)
        except (pa.ArrowException, OSError) as err:
            raise DatasetError(f"{where}: unreadable parquet: {_first_line(err)}") from None
    if kinds <= {".jsonl", ".json"}:
        tables = [_read_jsonl(f) for f in files]
        try:
            table = pa.concat_tables(tables, promote_options="default")
        except pa.ArrowException as err:
            raise DatasetError(f"{where}: the files' columns disagree: {_first_line(err)}") from None
        return datasets.Dataset(table)
    raise DatasetError(f"{where}: mixed file types {sorted(kinds)}; use one format")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _read_jsonl(path: Path) -> pa.Table:
    """One JSON object per line, each top-level field of one JSON type in every row (checked here,
    with the line, before Arrow infers the schema)."""
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes), no rows")
    first_seen: dict[str, tuple[str, int]] = {}
    rows = 0
    try:
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise DatasetError(
                        f"{path}:{line_no}: a row must be a JSON object, got {_json_kind(row)}"
                    )
                for key, value in row.items():
                    if value is None:
                        continue
                    kind = _json_kind(value)
                    seen, seen_line = first_seen.setdefault(key, (kind, line_no))
                    if kind != seen:
                        raise DatasetError(
                            f"{path}:{line_no}: field '{key}' is {kind} here but {seen} on line {seen_line}"
                        )
                rows += 1
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    if rows == 0:
        raise DatasetError(f"{path}: no rows (only blank lines)")
    try:
        return pa_json.read_json(path)
    except pa.ArrowException as err:
        raise DatasetError(f"{path}: rows do not share one schema: {_first_line(err)}") from None


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
        calls = m.get("tool_calls")
        if calls is not None:
            problem = _check_tool_calls(calls, m["role"])
            if problem:
                return f"'{field}'[{j}] {problem}"
        if calls and m["content"] in ("", None):
            continue  # an assistant turn that only calls tools (OpenAI's shape)
        if not isinstance(m["content"], str) or not m["content"].strip():
            return f"'{field}'[{j}] ({m['role']}) has empty content"
    if single_assistant and (len(value) != 1 or value[0]["role"] != "assistant"):
        return f"'{field}' must hold exactly one assistant message"
    return None


def _check_tool_calls(calls: Any, role: str) -> str | None:
    """A problem with a turn's ``tool_calls`` (OpenAI's shape: arguments as JSON text), or None."""
    if not isinstance(calls, list):
        return f"has 'tool_calls' that is not a list ({type(calls).__name__})"
    if calls and role != "assistant":
        return f"({role}) has tool calls; only an assistant turn calls tools"
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            return "has a tool call without a function name"
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return f"has tool call {function['name']!r} whose arguments are not valid JSON"
        if not isinstance(arguments, dict):
            return f"has tool call {function['name']!r} whose arguments are not a JSON object"
    return None


def _check_tools(tools: Any) -> str | None:
    """A problem with a row's ``tools`` (a JSON list of function schemas, or null), or None."""
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            return "'tools' is not valid JSON"
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        return "'tools' must be a list of function schemas"
    return None


def _raise(problems: list[str], what: str) -> None:
    if problems:
        more = len(problems) - MAX_REPORTED
        shown = problems[:MAX_REPORTED] + ([f"... and {more} more"] if more > 0 else [])
        raise DatasetError(f"bad {what} data ({len(problems)} row(s)): " + "; ".join(shown))


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
        if problem is None:  # tool-calling rows (the ``sft_tools`` config) carry their tools
            problem = _check_tools(row.get("tools"))
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
    """Drop rows whose chosen is not clearly better (Llama 3: the reward model drops
    "marginally_better", DPO also "slightly_better")."""
    if not drop or "strength" not in ds.column_names:
        return ds
    keep = [i for i, s in enumerate(ds["strength"]) if s not in drop]  # no progress bar, unlike filter
    return ds if len(keep) == len(ds) else ds.select(keep)


def kept_or_fail(ds: datasets.Dataset, drop: tuple[str, ...]) -> datasets.Dataset:
    """``keep_strengths``, refusing to leave nothing to train on."""
    kept = keep_strengths(ds, tuple(drop))
    if len(kept) == 0:
        raise DatasetError(
            f"no preference rows left after dropping strengths {list(drop)} "
            f"(of {len(ds)}; --drop-strengths chooses which to drop)"
        )
    return kept
