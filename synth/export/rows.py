"""One record -> one row of the export schema (:mod:`synth.export.schema`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from synth.records import Message, PreferenceRecord, Provenance, SFTRecord


def _messages(messages: Iterable[Message]) -> list[dict[str, str]]:
    # Message.name (tool name) is not part of the exported schema.
    return [{"role": m.role, "content": m.content} for m in messages]


def _assistant(content: str | None) -> list[dict[str, str]]:
    return [] if content is None else [{"role": "assistant", "content": content}]


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _scores_json(scores: Mapping[str, float]) -> str:
    # Non-finite scores become null so the column is always valid JSON.
    return json.dumps({k: _finite(v) for k, v in sorted(scores.items())}, ensure_ascii=False)


def _provenance_json(p: Provenance | None) -> str:
    return "{}" if p is None else p.model_dump_json()


def capability(record: SFTRecord | PreferenceRecord) -> str:
    """The record's capability: from its provenance, else ``meta["capability"]``, else ""."""
    if record.provenance is not None:
        return record.provenance.capability
    cap = record.meta.get("capability")
    return cap if isinstance(cap, str) else ""


def sft_row(record: SFTRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "messages": _messages(record.messages),
        "capability": capability(record),
        "scores": _scores_json(record.scores),
        "provenance": _provenance_json(record.provenance),
    }


def preference_row(record: PreferenceRecord) -> dict[str, Any]:
    edited = record.by_label("edited")
    return {
        "id": record.id,
        "prompt": _messages(record.prompt),
        "chosen": _assistant(record.chosen.content),
        "rejected": _assistant(record.rejected.content),
        "edited": _assistant(edited.content if edited else None),
        "strength": record.strength,
        "chosen_score": _finite(record.chosen.score),
        "rejected_score": _finite(record.rejected.score),
        "capability": capability(record),
        "scores": _scores_json(record.scores),
        "provenance": _provenance_json(record.provenance),
    }


# Per config: the record type it holds and how one becomes a row.
RECORD_TYPES: dict[str, type[SFTRecord] | type[PreferenceRecord]] = {
    "sft": SFTRecord,
    "preference": PreferenceRecord,
}
ROW_BUILDERS: dict[str, Callable[[Any], dict[str, Any]]] = {"sft": sft_row, "preference": preference_row}
