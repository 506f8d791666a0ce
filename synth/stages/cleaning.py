"""Rule cleaning after Llama 3: drop responses with overused emoji, excess exclamation marks,
apologetic openings, and empty or truncated answers.

Each rule is a small named function ``rule(text, meta) -> detail | None``: None keeps the response, a
string rejects it and says why. ``RULES`` lists them in the order they are checked; the rule's name is
the rejection reason the funnel counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from synth.records import SFTRecord

Rule = Callable[[str, dict[str, Any]], str | None]

_EMOJI = re.compile("[\U0001f300-\U0001faff\U00002600-\U000027bf\U0001f000-\U0001f2ff\U0001f900-\U0001f9ff]")
_APOLOGY = re.compile(
    r"^\s*(i\s*(?:'m|am)\s+(?:so\s+|very\s+|really\s+)?sorry|i\s+apologi[sz]e|my\s+apologies|"
    r"sorry\b|apologies\b|as an ai\b)",
    re.IGNORECASE,
)

MAX_EMOJI = 3
MAX_EXCLAMATIONS = 3


def empty(text: str, meta: dict[str, Any]) -> str | None:
    return "no visible text" if not text.strip() else None


def truncated(text: str, meta: dict[str, Any]) -> str | None:
    if meta.get("finish_reason") == "length":
        return f"stopped at max_tokens ({meta.get('completion_tokens')} tokens)"
    return None


def overused_emoji(text: str, meta: dict[str, Any]) -> str | None:
    n = len(_EMOJI.findall(text))
    return f"{n} emoji (max {MAX_EMOJI})" if n > MAX_EMOJI else None


def excess_exclamation(text: str, meta: dict[str, Any]) -> str | None:
    # code and quoted shell commands legitimately hold '!' (e.g. !=), so count prose only
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    n = len(re.findall(r"!(?!=)", prose))
    return f"{n} exclamation marks (max {MAX_EXCLAMATIONS})" if n > MAX_EXCLAMATIONS else None


def apologetic_opening(text: str, meta: dict[str, Any]) -> str | None:
    m = _APOLOGY.match(text)
    return f"opens with {m.group(0).strip()!r}" if m else None


RULES: tuple[Rule, ...] = (empty, truncated, overused_emoji, excess_exclamation, apologetic_opening)


def first_violation(
    text: str, meta: dict[str, Any], rules: tuple[Rule, ...] = RULES
) -> tuple[str, str] | None:
    for rule in rules:
        detail = rule(text, meta)
        if detail is not None:
            return rule.__name__, detail
    return None


def clean(records: list[SFTRecord], rules: tuple[Rule, ...] = RULES, stage: str = "clean") -> list[SFTRecord]:
    """Append a verdict to each record: rejected by the first rule it breaks, else kept."""
    for rec in records:
        hit = first_violation(rec.response or "", rec.meta, rules)
        if hit:
            rec.reject(stage, hit[0])
            rec.meta["clean_detail"] = hit[1]
        else:
            rec.keep(stage)
    return records


@dataclass
class Clean:
    """The cleaning stage: the first rule a response breaks is its rejection reason."""

    rules: tuple[Rule, ...] = RULES
    name: str = "clean"

    def __call__(self, records: list[SFTRecord]) -> list[SFTRecord]:
        return clean(records, self.rules, self.name)
