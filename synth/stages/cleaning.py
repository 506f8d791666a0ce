"""Rule cleaning after Llama 3: empty and truncated answers are dropped; overused emoji, excess
exclamation marks and an apologetic tone are measured, flagged and *balanced*, not all dropped.

Llama 3 (section 4.2.3) cleans its SFT data of "overly-apologetic tonal issues" and overused emoji
or exclamation points by balancing the proportion of such responses, not by removing every one. So:

- **hard rules** (``RULES``: ``empty``, ``truncated``) reject a response outright; the rule's name is
  the rejection reason the funnel counts;
- **tone scores** (``SCORES``) are recorded on every row's ``scores``: ``emoji`` (how many),
  ``exclamation`` (how many, prose only: code blocks, inline code, ``!=``, ``!important`` and markdown
  images ``![alt](url)`` do not count) and ``apology`` (apologetic phrases anywhere in the response;
  an apology that introduces a refusal, "I'm sorry, but I can't help with that", is not counted);
- **tone rules** (``TONE_RULES``: ``overused_emoji``, ``excess_exclamation``, ``apologetic_tone``)
  flag a response whose score passes the rule's limit; the flags go to ``meta["clean_flags"]`` and a
  kept flagged row's verdict names its first flag;
- the stage keeps flagged responses while they are at most ``max_flagged_share`` of its kept rows
  (default 0.1; 0 drops every flagged response, 1 keeps them all) and rejects the excess with the
  reason ``<first flag>_over_cap`` (e.g. ``apologetic_tone_over_cap``).

The share is enforced by a running count over the stage's rows in stream order: a flagged row is kept
when keeping it leaves flagged rows at most ``max_flagged_share`` of the rows kept so far. The stage
runs batch by batch (``Run.map``); on resume ``prepare`` reads the counts of the batches already
committed (a prefix of the same, fixed sequence of batches), so a resumed run decides every row
exactly as an uninterrupted one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from synth.records import SFTRecord

Rule = Callable[[str, dict[str, Any]], str | None]

MAX_EMOJI = 3
MAX_EXCLAMATIONS = 3
MAX_APOLOGIES = 0
MAX_FLAGGED_SHARE = 0.1
FLAGS_KEY = "clean_flags"

# Check marks, crosses and ballot boxes mark list items ("✅ tested", "❌ slow"): not emoji here.
_LIST_MARKS = "\u2713\u2714\u2705\u2611\u2610\u2612\u2717\u2718\u274c"
_EMOJI = re.compile(
    f"(?![{_LIST_MARKS}])"
    "[\U0001f300-\U0001faff\U00002600-\U000027bf\U0001f000-\U0001f2ff\U0001f900-\U0001f9ff]"
)

# Code never holds exclamation marks of tone: fenced blocks (closed or cut off), inline code spans.
_FENCED = re.compile(r"(```|~~~).*?(?:\1|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_IMAGE = re.compile(r"!\[[^\]\n]*\]\([^)\n]*\)")
# '!' of prose: not '!=' / '!==', not '!important' or '!x' (a word right after), not a shebang
_EXCLAMATION = re.compile(r"(?<!#)!(?![=\w])")

_APOS = "['\u2019]"
_APOLOGY = re.compile(
    rf"\b(?:i(?:\s+am|\s*{_APOS}m)\s+(?:so\s+|very\s+|really\s+|truly\s+|terribly\s+|deeply\s+)?sorry"
    rf"|we(?:\s+are|\s*{_APOS}re)\s+(?:so\s+|very\s+|really\s+|truly\s+)?sorry"
    r"|(?:i|we)\s+(?:do\s+|sincerely\s+|deeply\s+)?apologi[sz]e"
    r"|(?:my|our)\s+(?:sincere\s+|deepest\s+)?apologies"
    r"|as\s+an\s+ai(?:\s+language\s+model)?\b)"
    r"|(?:^|(?<=[.!?:;]\s)|(?<=\n))\s*(?:sorry|apologies)\b",
    re.IGNORECASE,
)
_AS_AN_AI = re.compile(r"as\s+an\s+ai", re.IGNORECASE)
# sympathy, not apology: "I'm sorry to hear that", "sorry for your loss"
_SYMPATHY = re.compile(r"^\s*(?:to\s+hear|for\s+your\s+loss|about\s+your\s+loss)\b", re.IGNORECASE)
# an apology that introduces a refusal: "I'm sorry, but I can't help with that"
_REFUSAL = re.compile(
    r"^[\s,.:;\u2014-]*(?:but\s+)?(?:as\s+an\s+ai(?:\s+language\s+model)?,?\s+)?"
    rf"(?:i(?:\s+am|\s*{_APOS}m)\s+afraid\s+(?:that\s+)?)?"
    rf"(?:i|we)\s*(?:can{_APOS}?t|cannot|can\s+not|won{_APOS}t|will\s+not|must\s+decline|(?:have|need)\s+to\s+decline"
    rf"|(?:am|are|{_APOS}m|{_APOS}re)\s+(?:unable|not\s+able|not\s+allowed)"
    rf"|don{_APOS}t\s+(?:think\s+i\s+can|have\s+access))",
    re.IGNORECASE,
)


# -- scores ---------------------------------------------------------------------------------------
# The scores run on every response of a run (millions at scale): each one first asks, in C, whether
# the characters its pattern needs are there at all, and skips the regex when they are not.
def emoji_count(text: str) -> int:
    return 0 if text.isascii() else len(_EMOJI.findall(text))  # every emoji is outside ASCII


def prose(text: str) -> str:
    """``text`` without code (fenced blocks, inline spans) and markdown images."""
    if "`" in text or "~~~" in text:
        text = _INLINE_CODE.sub("", _FENCED.sub("", text))
    return _IMAGE.sub("", text) if "![" in text else text


def exclamation_count(text: str) -> int:
    return len(_EXCLAMATION.findall(prose(text))) if "!" in text else 0


def apologies(text: str) -> list[str]:
    """The apologetic phrases of ``text``, in order; an apology that introduces a refusal (and the
    refusal itself) and sympathy ("sorry to hear that") are not among them."""
    found: list[str] = []
    lower = text.casefold()  # casefold: the regex's IGNORECASE also matches "ſ" for "s"
    if "sorry" not in lower and "apolog" not in lower and not _AS_AN_AI.search(text):
        return found  # none of the words every apologetic phrase holds
    consumed = 0
    for m in _APOLOGY.finditer(text):
        if m.start() < consumed:
            continue
        after = text[m.end() : m.end() + 80]
        refusal = _REFUSAL.match(after)
        if refusal:
            consumed = m.end() + refusal.end()
            continue
        if _SYMPATHY.match(after):
            continue
        found.append(m.group(0).strip())
    return found


def apology_score(text: str) -> int:
    return len(apologies(text))


# score name -> measure; every row gets each of them under ``scores``
SCORES: dict[str, Callable[[str], float]] = {
    "emoji": emoji_count,
    "exclamation": exclamation_count,
    "apology": apology_score,
}


# -- hard rules: reject ---------------------------------------------------------------------------
def empty(text: str, meta: dict[str, Any]) -> str | None:
    return "no visible text" if not text.strip() else None


def truncated(text: str, meta: dict[str, Any]) -> str | None:
    if meta.get("finish_reason") == "length":
        return f"stopped at max_tokens ({meta.get('completion_tokens')} tokens)"
    return None


# -- tone rules: flag -----------------------------------------------------------------------------
def overused_emoji(text: str, meta: dict[str, Any]) -> str | None:
    n = emoji_count(text)
    return f"{n} emoji (max {MAX_EMOJI})" if n > MAX_EMOJI else None


def excess_exclamation(text: str, meta: dict[str, Any]) -> str | None:
    n = exclamation_count(text)
    return f"{n} exclamation marks (max {MAX_EXCLAMATIONS})" if n > MAX_EXCLAMATIONS else None


def apologetic_tone(text: str, meta: dict[str, Any]) -> str | None:
    found = apologies(text)
    if len(found) > MAX_APOLOGIES:
        return f"{len(found)} apologetic phrases (max {MAX_APOLOGIES}): " + ", ".join(map(repr, found[:3]))
    return None


RULES: tuple[Rule, ...] = (empty, truncated)
TONE_RULES: tuple[Rule, ...] = (overused_emoji, excess_exclamation, apologetic_tone)


def violations(text: str, meta: dict[str, Any], rules: tuple[Rule, ...]) -> list[tuple[str, str]]:
    """(rule name, detail) of every rule ``text`` breaks, in the rules' order."""
    out = []
    for rule in rules:
        detail = rule(text, meta)
        if detail is not None:
            out.append((rule.__name__, detail))
    return out


def first_violation(
    text: str, meta: dict[str, Any], rules: tuple[Rule, ...] = RULES
) -> tuple[str, str] | None:
    found = violations(text, meta, rules)
    return found[0] if found else None


# -- the stage ------------------------------------------------------------------------------------
@dataclass
class Clean:
    """The cleaning stage: hard rules reject, tone rules flag, flagged rows kept up to
    ``max_flagged_share`` of the kept rows (see the module). ``kept`` and ``flagged`` are the running
    counts of this stage's kept rows and of the flagged ones among them."""

    max_flagged_share: float = MAX_FLAGGED_SHARE
    rules: tuple[Rule, ...] = RULES
    tone_rules: tuple[Rule, ...] = TONE_RULES
    name: str = "clean"
    kept: int = field(default=0, init=False)
    flagged: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_flagged_share <= 1.0:
            raise ValueError(f"max_flagged_share must be in [0, 1], got {self.max_flagged_share}")

    def prepare(self, run: Any, source: Any) -> None:
        """The counts of the batches committed before a restart (none on a fresh run)."""
        kept, flagged = run.store.query(
            "SELECT count(*) FILTER (WHERE kept), count(*) FILTER (WHERE kept AND "
            "coalesce(json_array_length(data, ?), 0) > 0) FROM records WHERE stage = ?",
            [f"$.meta.{FLAGS_KEY}", self.name],
        )[0]
        self.kept, self.flagged = int(kept), int(flagged)

    def admits_flagged(self) -> bool:
        """Whether one more flagged row keeps flagged rows within their share of the kept rows."""
        return self.flagged + 1 <= self.max_flagged_share * (self.kept + 1) + 1e-9

    def __call__(self, records: list[SFTRecord]) -> list[SFTRecord]:
        for rec in records:
            text, meta = rec.response or "", rec.meta
            for score, measure in SCORES.items():
                rec.scores[score] = float(measure(text))
            hit = first_violation(text, meta, self.rules)
            if hit:
                rec.reject(self.name, hit[0])
                meta["clean_detail"] = hit[1]
                continue
            flags = violations(text, meta, self.tone_rules)
            if not flags:
                rec.keep(self.name)
                self.kept += 1
                continue
            meta[FLAGS_KEY] = [name for name, _ in flags]
            meta["clean_detail"] = "; ".join(detail for _, detail in flags)
            if self.admits_flagged():
                rec.keep(self.name, flags[0][0])
                self.kept += 1
                self.flagged += 1
            else:
                rec.reject(self.name, f"{flags[0][0]}_over_cap")
                meta["clean_detail"] += f"; flagged rows at their cap ({self.max_flagged_share:g} of kept)"
        return records


def clean(
    records: list[SFTRecord], max_flagged_share: float = MAX_FLAGGED_SHARE, stage: str = "clean"
) -> list[SFTRecord]:
    """One pass of :class:`Clean` over ``records`` (counts start at zero)."""
    return Clean(max_flagged_share=max_flagged_share, name=stage)(records)
