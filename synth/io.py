"""Validated reading of JSONL input: errors name file, line and field.

Seed rows may be full records (``messages``) or the short form ``{"prompt": "..."}`` (optionally with
``system`` and ``id``). With ``skip_invalid`` a bad row is quarantined in the run store instead of
stopping the run, so nothing is silently lost: ``synth stats`` lists it.
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


@dataclass
class BadRow:
    path: str
    line: int
    field: str
    error: str
    raw: str


def iter_lines(path: Path | str) -> Iterator[tuple[int, str]]:
    """(line number, raw text) for each non-blank line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        for n, raw in enumerate(fh, start=1):
            if raw.strip():
                yield n, raw


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
    """Prompt rows of a seed JSONL, validated at the boundary, streamed, ids unique."""
    name = Path(path).name
    return iter_records(
        path, lambda d: seed_to_record(d, capability, name), skip_invalid=skip_invalid, on_bad=on_bad,
        unique_ids=True,
    )  # fmt: skip


def check_unique_ids(records: list[SFTRecord], path: Path | str) -> None:
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.id in seen:
            raise InputError(path, i + 1, "id", f"duplicate id {r.id!r} (row {seen[r.id] + 1})")
        seen[r.id] = i
