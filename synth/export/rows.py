"""One record -> one row of the export schema (:mod:`synth.export.schema`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from synth.records import Message, PreferenceRecord, Provenance, SFTRecord, StepLabelRecord


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


def _tool_messages(record: SFTRecord) -> list[dict[str, Any]] | None:
    """A tool-calling conversation in plain turns (``synth.chat.tool_fallback``: tools listed in the
    system message, calls as <tool_call> blocks, results as user turns); None for any other row."""
    if not record.tools and not any(m.tool_calls or m.role == "tool" for m in record.messages):
        return None
    from synth.chat import tool_fallback

    return tool_fallback([m.model_dump(exclude_none=True) for m in record.messages], record.tools)


def sft_row(record: SFTRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "messages": _tool_messages(record) or _messages(record.messages),
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


def step_labels_row(record: StepLabelRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "prompt": record.prompt,
        "completions": list(record.completions),
        "labels": list(record.labels),
        "soft_labels": [_finite(x) for x in record.soft_labels],
        "capability": capability(record),  # type: ignore[arg-type]
        "scores": _scores_json(record.scores),
        "provenance": _provenance_json(record.provenance),
    }


def sft_tools_row(record: SFTRecord) -> dict[str, Any]:
    """A tool-calling SFT row in OpenAI's shape (``sft_tools``), for TRL and tool-aware templates."""
    messages = [
        {
            "role": m.role,
            "content": m.content,
            "tool_calls": [c.model_dump() for c in m.tool_calls] if m.tool_calls else None,
            "tool_call_id": m.tool_call_id,
            "name": m.name if m.role == "tool" else None,
        }
        for m in record.messages
    ]
    return {
        "id": record.id,
        "messages": messages,
        "tools": json.dumps(record.tools, ensure_ascii=False) if record.tools else None,
        "capability": capability(record),
        "scores": _scores_json(record.scores),
        "provenance": _provenance_json(record.provenance),
    }


# Per config: the record type it holds and how one becomes a row.
RECORD_TYPES: dict[str, type[SFTRecord] | type[PreferenceRecord] | type[StepLabelRecord]] = {
    "sft": SFTRecord,
    "preference": PreferenceRecord,
    "step_labels": StepLabelRecord,
    "sft_tools": SFTRecord,
}
ROW_BUILDERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "sft": sft_row,
    "preference": preference_row,
    "step_labels": step_labels_row,
    "sft_tools": sft_tools_row,
}
