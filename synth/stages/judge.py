"""The judge stage kind: anything an LLM grades on a 1-10 rubric, every judge of every recipe.

``JudgeStage`` asks the engine for a 1-10 score with a rationale. Small models ignore bare format
instructions, so the rubric's prompt file carries worked examples as earlier chat turns (few-shot), and
the reply is parsed leniently. Where the engine can read token probabilities (``choice_logprobs``:
hf and vllm teacher-forced, openai from the reply's ``top_logprobs``), the score is the expectation
over the ten possible scores after "Score:" (G-Eval): a 135M judge writes "Score: 1" for nearly
everything, yet its distribution still ranks responses. The ten scores are read as *whole* labels
(``synth.engines.choices``): " 1" then something that is not a digit, " 10" then the same, so a
judge certain of 10 scores 10 even where " 10" is " 1" + "0". Where the engine (or server) gives no
probabilities the score is the number the reply wrote; ``meta["judge_score_method"]`` says which
("logprobs" or "text") for every row. A reward model scorer (``synth.stages.reward``) plugs in
through the same ``Scorer`` protocol.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

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


def expected_score(logprobs: dict[str, float]) -> float | None:
    """Probability-weighted mean of the scores 1-10, renormalised over those ten choices.

    The choices must be disjoint outcomes (whole labels, as ``choice_logprobs`` gives them): the
    probability of " 1" must not contain that of " 10". None when no score has any probability."""
    top = max(logprobs.values(), default=-math.inf)
    if not math.isfinite(top):
        return None
    weights = {int(c): math.exp(lp - top) for c, lp in logprobs.items()}
    return sum(s * w for s, w in weights.items()) / sum(weights.values())


@dataclass
class Judgement:
    score: float | None  # None: the reply held no score and the engine gives no distribution
    text_score: float | None  # the number the judge wrote, if any
    rationale: str
    reply: str
    method: str | None = None  # "logprobs" (expectation) | "text" (the written number) | None


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
        expected = expected_score(dist) if dist else None
        if expected is not None:
            score, method = round(expected, 4), "logprobs"
        else:
            score, method = text_score, ("text" if text_score is not None else None)
        out.append(Judgement(score, text_score, rationale, reply, method))
    return out


@dataclass
class JudgeStage:
    """The judge stage kind, behind every LLM judge: a rubric prompt file (system, few-shot verdicts,
    the user turn over ``variables(row)``), a 1-10 scale, and an optional threshold.

    Writes ``scores[score]`` and the reply, rationale, written number and how the score was read
    (``judge_score_method``: "logprobs" or "text") into ``meta``; rejects
    'judge_unparseable' (no score at all) and, with a threshold, 'below_threshold'.
    """

    concurrent: ClassVar[bool] = True  # batches may run in threads at once (Run.overlap)
    name: str
    engine: Engine
    prompt: Prompt
    variables: Callable[[Any], dict[str, Any]]
    score: str = "judge"
    threshold: float | None = None
    max_tokens: int = 64
    use_logprobs: bool = True  # when the engine offers choice_logprobs

    def __call__(self, records: list[Any]) -> list[Any]:
        requests = [Request.chat(self.prompt.messages(**self.variables(r)), id=r.id) for r in records]
        for rec, j in zip(
            records, judge(self.engine, requests, self.max_tokens, self.use_logprobs), strict=True
        ):
            rec.meta["judge_reply"] = j.reply
            if j.score is None:
                rec.reject(self.name, "judge_unparseable")
                continue
            rec.scores[self.score] = j.score
            rec.meta["judge_score_method"] = j.method
            rec.meta["judge_text_score"] = j.text_score
            rec.meta["judge_rationale"] = j.rationale
            if self.threshold is not None and j.score < self.threshold:
                rec.reject(self.name, "below_threshold")
            else:
                rec.keep(self.name)
        return records


def question_answer(rec: SFTRecord) -> dict[str, str]:
    """The general judge's variables: the whole conversation before the response, as ``history``
    (every turn before the last user turn, system prompt included, one "Role: text" block each;
    empty for a single-turn prompt) and ``question`` (the last user turn), and the ``answer``."""
    prompt = list(rec.prompt)
    last = max((i for i, m in enumerate(prompt) if m.role == "user"), default=len(prompt) - 1)
    history = "\n\n".join(f"{m.role.capitalize()}: {m.content}" for m in prompt[:last])
    question = "\n\n".join(
        [prompt[last].content, *(f"{m.role.capitalize()}: {m.content}" for m in prompt[last + 1 :])]
    )
    return {"history": history, "question": question, "answer": rec.response or ""}


def _has_choice_logprobs(engine: Engine) -> bool:
    if not callable(getattr(engine, "choice_logprobs", None)):
        return False
    probe = getattr(engine, "supports_choice_logprobs", None)  # a cache wrapper asks its inner engine
    return probe() if callable(probe) else True
