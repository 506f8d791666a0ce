"""``synth eval factuality``: how often a model refuses, over-refuses and answers wrong on held-out probes.

A probe is a question with its short answer (and aliases), about a fact never used for generation
(``pipelines/data/factuality/probes.jsonl``: capitals and continents of countries outside the shipped
corpus). Each probe is asked twice, greedily:

- as it is: the reply is a *refusal* (``synth.stages.factuality.refusal``), a *correct* answer (it
  states the answer or an alias, whole words after normalisation), or a *wrong* answer;
- with an instruction to give its best guess in a few words and never refuse (the *forced* answer):
  whether the model knows the fact, whatever it does when asked plainly.

The rates, over all probes: ``refusal_rate``; ``wrong_answer_rate`` (answered, and wrong);
``correct_rate``; ``over_refusal_rate`` (refused although its forced answer is correct: refusals where
the model was right); ``knows_rate`` (forced answer correct). ``over_refusal_share`` is the same
over-refusals as a share of the refusals. Run it on the model before training and on the checkpoint
trained on the recipe's data: refusals should replace wrong answers, not correct ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from synth.engines.base import Engine, Request, SamplingParams
from synth.io import iter_records
from synth.stages.factuality.questions import mentions
from synth.stages.factuality.refusal import is_refusal

FORCE = "Answer the question with your best guess in a few words. Never refuse and never say you do not know."


class AnsweredQuestion(BaseModel):
    """A held-out question with its gold answer and aliases (a probe here; the evaluation suite's
    long-context questions add their document)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: StrictStr
    question: StrictStr = Field(min_length=1)
    answer: StrictStr = Field(min_length=1)
    aliases: list[StrictStr] = Field(default_factory=list)

    def answered_by(self, text: str) -> bool:
        """Whether ``text`` states the answer or an alias (whole words, normalised)."""
        return any(mentions(text, a) for a in [self.answer, *self.aliases])


class Probe(AnsweredQuestion):
    snippet: StrictStr | None = None


def read_probes(path: str | Path, limit: int | None = None) -> Iterator[Probe]:
    """Probes of a JSONL file ``{"id", "question", "answer", "aliases"?, "snippet"?}``, validated."""
    return islice(iter_records(path, Probe.model_validate, unique_ids=True), limit)


@dataclass
class ProbeResult:
    id: str
    question: str
    answer: str
    reply: str
    forced: str
    refused: bool
    correct: bool
    knows: bool

    @property
    def outcome(self) -> str:
        if self.refused:
            return "over_refusal" if self.knows else "refusal"
        return "correct" if self.correct else "wrong"


def evaluate(
    engine: Engine, probes: list[Probe], max_tokens: int = 64, batch_size: int = 16
) -> tuple[dict[str, Any], list[ProbeResult]]:
    """The rates (see the module) and each probe's result."""
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens)
    results: list[ProbeResult] = []
    for start in range(0, len(probes), batch_size):
        batch = probes[start : start + batch_size]
        plain = [Request.chat([{"role": "user", "content": p.question}], id=p.id) for p in batch]
        forced = [
            Request.chat(
                [{"role": "system", "content": FORCE}, {"role": "user", "content": p.question}], id=p.id
            )
            for p in batch
        ]
        replies = engine.generate(plain + forced, greedy)
        for i, p in enumerate(batch):
            reply, guess = replies[i][0].text.strip(), replies[len(batch) + i][0].text.strip()
            refused = is_refusal(reply)
            results.append(
                ProbeResult(
                    id=p.id,
                    question=p.question,
                    answer=p.answer,
                    reply=reply,
                    forced=guess,
                    refused=refused,
                    correct=not refused and p.answered_by(reply),
                    knows=p.answered_by(guess),
                )
            )
    return rates(results), results


def rates(results: list[ProbeResult]) -> dict[str, Any]:
    n = len(results)
    count = {k: sum(r.outcome == k for r in results) for k in ("correct", "wrong", "refusal", "over_refusal")}
    refusals = count["refusal"] + count["over_refusal"]

    def share(x: int, of: int = n) -> float:
        return round(x / of, 4) if of else 0.0

    return {
        "probes": n,
        "refusal_rate": share(refusals),
        "over_refusal_rate": share(count["over_refusal"]),
        "wrong_answer_rate": share(count["wrong"]),
        "correct_rate": share(count["correct"]),
        "knows_rate": share(sum(r.knows for r in results)),
        "over_refusal_share": share(count["over_refusal"], refusals),
        "counts": count,
    }


def write_report(path: str | Path, metrics: dict[str, Any], results: list[ProbeResult], **about: Any) -> None:
    """The metrics, what was evaluated (``about``) and every probe's result, as one JSON file."""
    report = {**about, "metrics": metrics, "results": [{**asdict(r), "outcome": r.outcome} for r in results]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
