"""The rows the math recipe ends with, besides verified SFT rows and step labels (``steps``).

- ``MathPairs`` (grouped by problem): preference rows, a correct step-verified solution (chosen) over
  an incorrect one of the same problem (rejected): a wrong answer first, else one with no answer. Up
  to ``pairs_per_problem`` pairs, each solution used once.
- ``Correct`` (grouped by problem): Llama 3's "learning from feedback and mistakes": up to
  ``per_problem`` incorrect solutions go back to the model with the feedback that they are wrong
  (``synth/prompts/math/correct.yaml``: the wrong final answer, or that there was none; never the
  gold answer); its reply is a ``MathSolution`` in mode ``correction``, graded like any other.
- ``CorrectionRows``: each correction the grader found right becomes an SFT row whose user turn holds
  the problem, the incorrect attempt and the feedback, and whose assistant turn is the corrected
  solution (so the loss falls on the correction, not on the mistake).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synth.engines.base import Completion
from synth.prompts import load_prompt
from synth.records import Message, PreferenceRecord, Record, Response, SFTRecord
from synth.stages.llm import LLMStage
from synth.stages.math.items import CAPABILITY, MathSolution
from synth.stages.select import group_by_prompt

WRONG_FIRST = {"wrong_answer": 0, "timeout": 1, "no_answer": 2}


def _wrong(rows: list[Any]) -> list[MathSolution]:
    """A problem's incorrect solutions, wrong answers first, then by id."""
    bad = [r for r in rows if isinstance(r, MathSolution) and r.correct is False and r.answer]
    return sorted(bad, key=lambda r: (WRONG_FIRST.get(_reason(r), 3), r.id))


def _reason(sol: MathSolution) -> str:
    return next((v.reason or "" for v in reversed(sol.verdicts) if not v.kept), "")


@dataclass
class MathPairs:
    """Graded solutions and verified SFT rows (whole problems, ``Run.grouped`` over their latest
    rows) -> correct-over-incorrect preference rows."""

    pairs_per_problem: int = 1
    strength: str = "better"
    name: str = "preference_pairs"

    def __call__(self, rows: list[Record]) -> list[Record]:
        out: list[Record] = []
        for problem_id, group in group_by_prompt(rows).items():  # type: ignore[arg-type]
            good = sorted((r for r in group if isinstance(r, SFTRecord) and r.kept), key=lambda r: r.id)
            for chosen, rejected in list(zip(good, _wrong(group), strict=False))[: self.pairs_per_problem]:
                if chosen.response.strip() == rejected.text.strip():
                    continue
                pair = PreferenceRecord(
                    id=f"{chosen.id}-vs-{rejected.id}",
                    prompt=[Message(role="user", content=chosen.prompt[-1].content)],
                    responses=[
                        Response(content=chosen.response, label="chosen", score=1.0),
                        Response(content=rejected.text.strip(), label="rejected", score=0.0),
                    ],
                    strength=self.strength,  # type: ignore[arg-type]
                    provenance=chosen.provenance,
                    meta={"prompt_id": problem_id, "chosen_id": chosen.id, "rejected_id": rejected.id,
                          "rejected_reason": _reason(rejected), "rejected_answer": rejected.extracted,
                          "answer": chosen.meta.get("answer")},
                )  # fmt: skip
                pair.keep(self.name)
                out.append(pair)
        return out


def feedback(sol: MathSolution, templates: dict[str, str]) -> str:
    """What the model is told about an incorrect solution (never the gold answer)."""
    reason = _reason(sol) if _reason(sol) in templates else "wrong_answer"
    if reason != "no_answer" and not sol.extracted:
        reason = "no_answer"
    return templates[reason].replace("{{ answer }}", sol.extracted or "").strip()


@dataclass(kw_only=True)
class Correct(LLMStage):
    """Incorrect solutions (whole problems, ``Run.grouped``) -> corrected solutions (ids
    ``{solution}-fix``), for up to ``per_problem`` of each problem's incorrect solutions."""

    name: str = "correct"
    capability: str = CAPABILITY
    per_problem: int = 1

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = load_prompt("math/correct")

    def __call__(self, rows: list[MathSolution]) -> list[Record]:
        picked = [s for group in group_by_prompt(rows).values() for s in _wrong(group)[: self.per_problem]]
        return super().__call__(picked)

    def variables(self, sol: MathSolution) -> dict[str, str]:
        assert self.prompt is not None
        told = feedback(sol, self.prompt.data["feedback"])
        return {"problem": sol.problem, "wrong": sol.text.strip(), "feedback": told}

    def output_id(self, sol: MathSolution, j: int) -> str:
        return f"{sol.id}-fix"

    def parse(self, sol: MathSolution, reply: Completion, j: int, messages: Any) -> MathSolution:
        return MathSolution(
            id=self.output_id(sol, j),
            problem_id=sol.problem_id,
            problem=sol.problem,
            answer=sol.answer,
            synthetic=sol.synthetic,
            sample=sol.sample,
            mode="correction",
            text=reply.text.strip("\n") + "\n",
            corrects=sol.id,
            feedback=self.variables(sol)["feedback"],
            wrong_text=sol.text.strip(),
            meta={"request": messages[-1]["content"], "finish_reason": reply.finish_reason},
        )


@dataclass
class CorrectionRows:
    """Graded corrections (kept ones) -> error-correction SFT rows."""

    name: str = "error_correction"

    def __call__(self, fixes: list[MathSolution]) -> list[Record]:
        out: list[Record] = []
        for fix in fixes:
            row = SFTRecord(
                id=fix.id,
                messages=[Message(role="user", content=fix.meta["request"]),
                          Message(role="assistant", content=fix.text.strip())],
                provenance=fix.provenance,
                meta={"prompt_id": fix.problem_id, "corrects": fix.corrects, "feedback": fix.feedback,
                      "answer": fix.answer, "extracted": fix.extracted},
            )  # fmt: skip
            row.keep(self.name)
            out.append(row)
        return out
