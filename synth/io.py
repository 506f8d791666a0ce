"""Validated reading of JSONL input: errors name file, line and field.

Seed rows may be full records (``messages``) or the short form ``{"prompt": "..."}`` (optionally with
``system`` and ``id``). With ``skip_invalid`` a bad row (a line that is not UTF-8 included) is
quarantined in the run store instead of stopping the run, so nothing is silently lost: ``synth stats``
lists it. A file that cannot be read as a JSONL (a directory, an unreadable file) is an ``InputError``
naming it; a seed file with no prompt in it is one too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from synth.records import SFTRecord, stable_id


class InputError(ValueError):
    """A malformed input row; the message names file, line and field."""

    def __init__(self, path: Path | str, line: int, field: str, error: str, raw: str = "") -> None:
        self.path, self.line, self.field, self.error, self.raw = str(path), line, field, error, raw
        super().__init__(f"{path}:{line}: field '{field}': {error}")


class InputFileError(ValueError):
    """An input file that cannot be used as a whole (a directory, unreadable, no rows): one line."""


@dataclass
class BadRow:
    path: str
    line: int
    field: str
    error: str
    raw: str


def iter_lines(path: Path | str) -> Iterator[tuple[int, str]]:
    """(line number, raw text) for each non-blank line. Bytes that are not UTF-8 come through as
    surrogate escapes, so one bad line does not stop the file (``iter_records`` reports it)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.is_dir():
        raise InputFileError(f"{path} is a directory, not a JSONL file")
    try:
        fh = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 - closed below
    except OSError as e:
        raise InputFileError(f"{path}: cannot read: {e.strerror or e}") from None
    with fh:
        for n, raw in enumerate(fh, start=1):
            if raw.strip():
                yield n, raw


def _not_utf8(raw: str) -> str | None:
    """What is wrong with a line read with surrogate escapes, if it is not UTF-8 (else None)."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = raw.encode("utf-8", "surrogateescape")[len(raw[: e.start].encode("utf-8"))]
        return f"not UTF-8: byte 0x{byte:02x} at column {e.start + 1}"
    return None


def _field_of(err: ValidationError) -> tuple[str, str]:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<row>"
    return loc, first["msg"]


def seed_to_record(data: Any, capability: str, source: str) -> SFTRecord:
    """Turn one seed row into a prompt-only SFTRecord (raises ValidationError / ValueError)."""
    if not isinstance(data, dict):
        raise TypeError(f"row must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    if "messages" not in data:
        if "prompt" not in data:
            raise KeyError("messages")
        prompt = data.pop("prompt")
        messages: list[Any] = []
        if "system" in data:
            messages.append({"role": "system", "content": data.pop("system")})
        messages.append({"role": "user", "content": prompt})
        data["messages"] = messages
    data.setdefault("id", stable_id(data["messages"]))
    data.setdefault("provenance", {"capability": capability, "source": source})
    return SFTRecord.model_validate(data)


def read_records(
    path: Path | str,
    parse: Callable[[Any], Any],
    *,
    skip_invalid: bool = False,
    on_bad: Callable[[BadRow], None] | None = None,
) -> list[Any]:
    """Parse each line with ``parse``; a bad row raises InputError, or with ``skip_invalid`` is
    handed to ``on_bad`` (the run's quarantine) and skipped."""
    return list(iter_records(path, parse, skip_invalid=skip_invalid, on_bad=on_bad))


def iter_records(
    path: Path | str,
    parse: Callable[[Any], Any],
    *,
    skip_invalid: bool = False,
    on_bad: Callable[[BadRow], None] | None = None,
    unique_ids: bool = False,
) -> Iterator[Any]:
    """``read_records`` as a stream (a seed file of millions of rows is never held); with
    ``unique_ids`` a repeated id is an error naming both lines."""
    seen: dict[str, int] = {}
    for n, raw in iter_lines(path):
        bad_bytes = _not_utf8(raw)
        if bad_bytes is not None:
            shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            bad = BadRow(str(path), n, "<encoding>", bad_bytes, shown)
            if not skip_invalid:
                raise InputError(bad.path, bad.line, bad.field, bad.error, bad.raw)
            if on_bad:
                on_bad(bad)
            continue
        try:
            rec = parse(json.loads(raw))
            if unique_ids:
                if rec.id in seen:
                    raise InputError(path, n, "id", f"duplicate id {rec.id!r} (line {seen[rec.id]})")
                seen[rec.id] = n
            yield rec
            continue
        except json.JSONDecodeError as e:
            bad = BadRow(str(path), n, "<json>", f"invalid JSON: {e.msg} at column {e.colno}", raw)
        except ValidationError as e:
            field, msg = _field_of(e)
            bad = BadRow(str(path), n, field, msg, raw)
        except KeyError as e:
            bad = BadRow(str(path), n, str(e.args[0]), "missing required field", raw)
        except (TypeError, ValueError) as e:
            bad = BadRow(str(path), n, "<row>", str(e), raw)
        if not skip_invalid:
            raise InputError(bad.path, bad.line, bad.field, bad.error, bad.raw)
        if on_bad:
            on_bad(bad)


def read_seeds(
    path: Path | str,
    capability: str,
    *,
    skip_invalid: bool = False,
    on_bad: Callable[[BadRow], None] | None = None,
) -> Iterator[SFTRecord]:
    """Prompt rows of a seed JSONL, validated at the boundary, streamed, ids unique; a file without
    a single prompt (empty, or every row quarantined) is an ``InputFileError``."""
    name = Path(path).name
    bad = 0

    def count_bad(row: BadRow) -> None:
        nonlocal bad
        bad += 1
        if on_bad:
            on_bad(row)

    rows = iter_records(
        path, lambda d: seed_to_record(d, capability, name), skip_invalid=skip_invalid, on_bad=count_bad,
        unique_ids=True,
    )  # fmt: skip
    n = 0
    for rec in rows:
        n += 1
        yield rec
    if n == 0:
        why = f"all {bad} rows are malformed (quarantined)" if bad else "it is empty"
        raise InputFileError(f"{path}: no prompts to run: {why}")


def check_unique_ids(records: list[SFTRecord], path: Path | str) -> None:
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.id in seen:
            raise InputError(path, i + 1, "id", f"duplicate id {r.id!r} (row {seen[r.id] + 1})")
        seen[r.id] = i
