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
    out = []
    for n, raw in iter_lines(path):
        try:
            out.append(parse(json.loads(raw)))
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
    return out


def check_unique_ids(records: list[SFTRecord], path: Path | str) -> None:
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.id in seen:
            raise InputError(path, i + 1, "id", f"duplicate id {r.id!r} (row {seen[r.id] + 1})")
        seen[r.id] = i
