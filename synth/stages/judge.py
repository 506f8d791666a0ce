"""Scorers: anything that writes a named score into each record.

``LLMJudge`` asks the engine for a 1-10 score with a rationale. Small models ignore bare format
instructions, so the prompt carries two worked examples as earlier chat turns (few-shot), and the reply
is parsed leniently. Where the engine can read token probabilities (``choice_logprobs``: the hf engine),
the score is the expectation over the ten possible scores after "Score:" (G-Eval): a 135M judge writes
"Score: 1" for nearly everything, yet its distribution still ranks responses. A reward model scorer
(``synth.stages.reward``) plugs in through the same ``Scorer`` protocol.
"""

from __future__ import annotations

import math
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


SCORE_CHOICES = tuple(f" {i}" for i in range(1, 11))


def expected_score(logprobs: dict[str, float]) -> float:
    """Probability-weighted mean of the scores 1-10, renormalised over those ten choices."""
    top = max(logprobs.values())
    weights = {int(c): math.exp(lp - top) for c, lp in logprobs.items()}
    return sum(s * w for s, w in weights.items()) / sum(weights.values())


@dataclass
class Judgement:
    score: float | None  # None: the reply held no score and the engine gives no distribution
    text_score: float | None  # the number the judge wrote, if any
    rationale: str
    reply: str


def judge(
    engine: Engine, requests: list[Request], max_tokens: int, use_logprobs: bool = True
) -> list[Judgement]:
    """A greedy reply per judge prompt, scored by the expectation over "Score: 1..10" where the
    engine offers ``choice_logprobs``, else by the number the reply holds. Every LLM judge uses this."""
    if not requests:
        return []
    sampling = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens)
    replies = [c[0].text for c in engine.generate(requests, sampling)]
    dists: list[dict[str, float] | None] = [None] * len(requests)
    if use_logprobs and _has_choice_logprobs(engine):
        dists = engine.choice_logprobs(requests, "Score:", list(SCORE_CHOICES))
    out = []
    for reply, dist in zip(replies, dists, strict=True):
        parsed = parse_judgement(reply)
        text_score, rationale = parsed if parsed else (None, reply.strip())
        score = round(expected_score(dist), 4) if dist is not None else text_score
        out.append(Judgement(score, text_score, rationale, reply))
    return out


@dataclass
class LLMJudge:
    engine: Engine
    name: str = "judge"
    max_tokens: int = 64
    stage: str = "judge"
    use_logprobs: bool = True  # when the engine offers choice_logprobs

    def __call__(self, records: list[SFTRecord]) -> list[SFTRecord]:
        requests = [Request.chat(judge_messages(_question(r), r.response or "")) for r in records]
        for rec, j in zip(
            records, judge(self.engine, requests, self.max_tokens, self.use_logprobs), strict=True
        ):
            rec.meta["judge_reply"] = j.reply
            if j.score is None:
                rec.reject(self.stage, "judge_unparseable")
                continue
            rec.scores[self.name] = j.score
            rec.meta["judge_text_score"] = j.text_score
            rec.meta["judge_rationale"] = j.rationale
            rec.keep(self.stage)
        return records


def _has_choice_logprobs(engine: Engine) -> bool:
    if not callable(getattr(engine, "choice_logprobs", None)):
        return False
    probe = getattr(engine, "supports_choice_logprobs", None)  # a cache wrapper asks its inner engine
    return probe() if callable(probe) else True


def _question(rec: SFTRecord) -> str:
    users = [m.content for m in rec.prompt if m.role == "user"]
    return users[-1] if users else rec.prompt[-1].content
