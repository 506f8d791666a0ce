"""Scorers: anything that writes a named score into each record.

``LLMJudge`` asks the engine for a 1-10 score with a rationale. Small models ignore bare format
instructions, so the prompt carries two worked examples as earlier chat turns (few-shot), and the reply
is parsed leniently. A reward model scorer (``train``) plugs in through the same ``Scorer`` protocol.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from synth.engines.base import Engine, Request, SamplingParams
from synth.records import SFTRecord


class Scorer(Protocol):
    name: str

    def __call__(self, records: list[SFTRecord]) -> list[SFTRecord]: ...


JUDGE_TEMPLATE_VERSION = "1"
JUDGE_SYSTEM = (
    "You are a strict grader. You rate an assistant's answer from 1 to 10 for helpfulness, "
    "correctness and clarity, and reply exactly in the form 'Score: N' followed by "
    "'Rationale: <one sentence>'."
)
_SHOTS = (
    ("Name a primary color.", "Red is a primary color.", "Score: 9\nRationale: Correct and direct."),
    (
        "What is 10 divided by 2?",
        "I'm not sure, maybe 3!!!",
        "Score: 2\nRationale: The answer is wrong; 10 / 2 is 5.",
    ),
)
_SCORE = re.compile(r"score\s*[:=]?\s*(10|[1-9])(?:\s*/\s*10)?\b", re.IGNORECASE)
_BARE = re.compile(r"\b(10|[1-9])\s*(?:/\s*10|out of 10)\b", re.IGNORECASE)
_RATIONALE = re.compile(r"rationale\s*[:=]\s*(.+)", re.IGNORECASE | re.DOTALL)


def judge_messages(question: str, answer: str) -> list[dict[str, str]]:
    def turn(q: str, a: str) -> str:
        return f"Question: {q}\n\nAnswer: {a}\n\nRate the answer."

    msgs = [{"role": "system", "content": JUDGE_SYSTEM}]
    for q, a, verdict in _SHOTS:
        msgs += [{"role": "user", "content": turn(q, a)}, {"role": "assistant", "content": verdict}]
    msgs.append({"role": "user", "content": turn(question, answer)})
    return msgs


def parse_judgement(text: str) -> tuple[float, str] | None:
    """(score, rationale) from a judge reply, or None when it holds no 1-10 score."""
    m = _SCORE.search(text) or _BARE.search(text)
    if not m:
        return None
    r = _RATIONALE.search(text)
    rationale = (r.group(1) if r else text[m.end() :]).strip().splitlines()
    return float(m.group(1)), (rationale[0].strip() if rationale else "")


@dataclass
class LLMJudge:
    engine: Engine
    name: str = "judge"
    max_tokens: int = 64
    stage: str = "judge"

    def __call__(self, records: list[SFTRecord]) -> list[SFTRecord]:
        requests = [Request.chat(judge_messages(_question(r), r.response or "")) for r in records]
        sampling = SamplingParams(n=1, temperature=0.0, max_tokens=self.max_tokens)
        for rec, comps in zip(records, self.engine.generate(requests, sampling), strict=True):
            parsed = parse_judgement(comps[0].text)
            if parsed is None:
                rec.reject(self.stage, "judge_unparseable")
                rec.meta["judge_reply"] = comps[0].text
                continue
            rec.scores[self.name], rec.meta["judge_rationale"] = parsed
            rec.keep(self.stage)
        return records


def _question(rec: SFTRecord) -> str:
    users = [m.content for m in rec.prompt if m.role == "user"]
    return users[-1] if users else rec.prompt[-1].content
