"""The judge stage kind: anything an LLM grades on a 1-10 rubric, every judge of every recipe.

``JudgeStage`` asks the engine for a 1-10 score with a rationale. Small models ignore bare format
instructions, so the rubric's prompt file carries worked examples as earlier chat turns (few-shot), and
the reply is parsed leniently. Where the engine can read token probabilities (``choice_logprobs``),
the score is the expectation over the ten possible scores after "Score:" (G-Eval): a 135M judge writes
"Score: 1" for nearly everything, yet its distribution still ranks responses. A reward model scorer
(``synth.stages.reward``) plugs in through the same ``Scorer`` protocol.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from synth.engines.base import Engine, Request, SamplingParams
from synth.prompts import Prompt
from synth.records import SFTRecord


class Scorer(Protocol):
    name: str

    def __call__(self, records: list[SFTRecord]) -> list[SFTRecord]: ...


_SCORE = re.compile(r"score\s*[:=]?\s*(10|[1-9])(?:\s*/\s*10)?\b", re.IGNORECASE)
_BARE = re.compile(r"\b(10|[1-9])\s*(?:/\s*10|out of 10)\b", re.IGNORECASE)
_RATIONALE = re.compile(r"rationale\s*[:=]\s*(.+)", re.IGNORECASE | re.DOTALL)


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
class JudgeStage:
    """The judge stage kind, behind every LLM judge: a rubric prompt file (system, few-shot verdicts,
    the user turn over ``variables(row)``), a 1-10 scale, and an optional threshold.

    Writes ``scores[score]`` and the reply, rationale and written number into ``meta``; rejects
    'judge_unparseable' (no score at all) and, with a threshold, 'below_threshold'.
    """

    name: str
    engine: Engine
    prompt: Prompt
    variables: Callable[[Any], dict[str, Any]]
    score: str = "judge"
    threshold: float | None = None
    max_tokens: int = 64
    use_logprobs: bool = True  # when the engine offers choice_logprobs

    def __call__(self, records: list[Any]) -> list[Any]:
        requests = [Request.chat(self.prompt.messages(**self.variables(r))) for r in records]
        for rec, j in zip(
            records, judge(self.engine, requests, self.max_tokens, self.use_logprobs), strict=True
        ):
            rec.meta["judge_reply"] = j.reply
            if j.score is None:
                rec.reject(self.name, "judge_unparseable")
                continue
            rec.scores[self.score] = j.score
            rec.meta["judge_text_score"] = j.text_score
            rec.meta["judge_rationale"] = j.rationale
            if self.threshold is not None and j.score < self.threshold:
                rec.reject(self.name, "below_threshold")
            else:
                rec.keep(self.name)
        return records


def question_answer(rec: SFTRecord) -> dict[str, str]:
    """The general judge's variables: the last user turn and the response."""
    users = [m.content for m in rec.prompt if m.role == "user"]
    return {"question": users[-1] if users else rec.prompt[-1].content, "answer": rec.response or ""}


def _has_choice_logprobs(engine: Engine) -> bool:
    if not callable(getattr(engine, "choice_logprobs", None)):
        return False
    probe = getattr(engine, "supports_choice_logprobs", None)  # a cache wrapper asks its inner engine
    return probe() if callable(probe) else True
