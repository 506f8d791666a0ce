"""The knowledge probe's decision per question (Llama 3's steps 4-6), over its K judged answers.

An answer is *correct* when the correctness judge (against the snippet) scores it at least
``correct`` (``correct_by: match``: when it states the snippet's answer; ``both``: both), and
*informative* when the informativeness judge scores it at least ``informative`` and it is not a
refusal (``synth.stages.factuality.refusal``). A question is

- *known* when at least ``known_share`` of its answers are correct: the data must not teach the model
  to refuse what it knows, so its best correct answer (by correctness, then informativeness) becomes
  an SFT row;
- *consistently wrong* when at least ``wrong_share`` of its answers are informative and incorrect (by
  default all of them: Llama 3's "consistently informative and incorrect across the generations"):
  its most informative wrong answer goes on to get a refusal written for it;
- *inconsistent* otherwise: neither row is made.

``ProbeSelect`` is the stage (``Run.grouped`` by question), once for each branch: ``want="known"``
keeps the best correct answer of known questions (others rejected 'not_best' / 'incorrect', and every
answer of other questions with the question's verdict as the reason: 'consistently_wrong' or
'inconsistent'); ``want="consistently_wrong"`` keeps the most informative wrong answer of consistently
wrong questions ('not_most_informative' for the others; 'known' or 'inconsistent' for other questions).
Every answer records the decision in ``meta["probe"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synth.records import SFTRecord
from synth.stages.factuality.questions import mentions
from synth.stages.factuality.refusal import is_refusal
from synth.stages.select import group_by_prompt

VERDICTS = ("known", "consistently_wrong", "inconsistent")
CORRECT_BY = ("judge", "match", "both")


@dataclass(frozen=True)
class Thresholds:
    correct: float = 7.0
    informative: float = 5.0
    known_share: float = 0.5
    wrong_share: float = 1.0
    correct_by: str = "judge"


def is_correct(rec: SFTRecord, t: Thresholds) -> bool:
    judged = rec.scores.get("correctness", 0.0) >= t.correct
    matched = mentions(rec.response or "", rec.meta.get("reference", ""))
    return {"judge": judged, "match": matched, "both": judged and matched}[t.correct_by]


def is_informative(rec: SFTRecord, t: Thresholds) -> bool:
    return rec.scores.get("informativeness", 0.0) >= t.informative and not is_refusal(rec.response or "")


def decide(group: list[SFTRecord], t: Thresholds) -> tuple[str, dict[str, Any]]:
    """A question's verdict from its answers, and the counts behind it."""
    n = len(group)
    correct = sum(is_correct(r, t) for r in group)
    wrong = sum(is_informative(r, t) and not is_correct(r, t) for r in group)
    facts = {"answers": n, "correct": correct, "informative_wrong": wrong}
    if n and correct / n >= t.known_share:
        return "known", facts
    if n and wrong / n >= t.wrong_share:
        return "consistently_wrong", facts
    return "inconsistent", facts


@dataclass
class ProbeSelect:
    """Answers of whole questions -> the row of one branch (see the module)."""

    want: str
    thresholds: Thresholds
    name: str = ""

    def __post_init__(self) -> None:
        if self.want not in ("known", "consistently_wrong"):
            raise ValueError(f"want must be known or consistently_wrong, got {self.want!r}")
        self.name = self.name or ("known_answers" if self.want == "known" else "consistently_wrong")

    def __call__(self, rows: list[SFTRecord]) -> list[SFTRecord]:
        t = self.thresholds
        for group in group_by_prompt(rows).values():
            verdict, facts = decide(group, t)
            for r in group:
                r.meta["probe"] = {"verdict": verdict, **facts}
            if verdict != self.want:
                for r in group:
                    r.reject(self.name, verdict)
                continue
            if self.want == "known":
                eligible = [r for r in group if is_correct(r, t)]
                others = "incorrect"
                key = _by("correctness", "informativeness")
            else:
                eligible = [r for r in group if is_informative(r, t) and not is_correct(r, t)]
                others = "not_most_informative"
                key = _by("informativeness", "correctness", low_second=True)
            best = min(eligible, key=key)
            for r in group:
                if r is best:
                    r.keep(self.name, verdict)
                elif r in eligible:
                    r.reject(self.name, "not_best" if self.want == "known" else others)
                else:
                    r.reject(self.name, others)
        return rows


def _by(first: str, second: str, low_second: bool = False):
    # highest ``first`` score, then highest (or lowest) ``second``, then the id: a rerun picks the same
    def key(r: SFTRecord) -> tuple:
        s2 = r.scores.get(second, 0.0)
        return (-r.scores.get(first, 0.0), s2 if low_second else -s2, r.id)

    return key
