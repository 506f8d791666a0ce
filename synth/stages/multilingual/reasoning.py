"""Translated quantitative reasoning, answered natively (Llama 3 section 4.3.2).

- ``SolveInLanguage``: a translated problem -> K solutions written in its language
  (``synth/prompts/multilingual/solve.yaml``: one worked problem in that language as the few-shot turn),
  as the math recipe's ``MathSolution``s, so the math grader (``synth.stages.math.grade.GradeStage``)
  grades them against the gold answer carried over from the English problem.
- ``SolutionRows``: a graded, language-checked solution -> an SFT row (the translated problem, the
  native solution), with its language in its provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synth.engines.base import Completion
from synth.records import Message, Provenance, SFTRecord
from synth.stages.language import language_name, set_language
from synth.stages.math.items import MathProblem, MathSolution
from synth.stages.math.solve import Solve
from synth.stages.multilingual.items import CAPABILITY


@dataclass(kw_only=True)
class SolveInLanguage(Solve):
    """Translated problems -> K solutions each, in the problem's language."""

    name: str = "solve_translated"
    capability: str = CAPABILITY
    template: str = "multilingual/solve"

    def variables(self, prob: MathProblem) -> dict[str, str]:
        lang = prob.meta["language"]
        example = self.prompt.data["examples"][lang]
        return {
            "language_name": language_name(lang),
            "problem": prob.problem,
            "shot_problem": example["problem"],
            "shot_solution": example["solution"],
        }

    def provenance(self, item: MathProblem) -> Provenance:
        p = super().provenance(item)
        p.language = item.meta["language"]
        return p

    def parse(self, prob: MathProblem, reply: Completion, j: int, messages: Any) -> MathSolution:
        sol = super().parse(prob, reply, j, messages)
        sol.meta.update(
            language=prob.meta["language"],
            source_problem_id=prob.meta.get("source_problem_id"),
            source_problem=prob.meta.get("source_problem"),
        )
        return sol


@dataclass
class SolutionRows:
    """Correct solutions in the right language -> SFT rows (the translated problem, the solution)."""

    name: str = "translated_sft"

    def __call__(self, solutions: list[MathSolution]) -> list[SFTRecord]:
        out = []
        for s in solutions:
            rec = SFTRecord(
                id=s.id,
                messages=[
                    Message(role="user", content=s.problem),
                    Message(role="assistant", content=s.text.strip()),
                ],
                provenance=(s.provenance or Provenance(capability=CAPABILITY)).model_copy(),
                scores=dict(s.scores),
                meta={
                    "prompt_id": s.problem_id,
                    "gold_answer": s.answer,
                    "extracted": s.extracted,
                    "source_problem_id": s.meta.get("source_problem_id"),
                    "source_problem": s.meta.get("source_problem"),
                    "lid": s.meta.get("lid", {}),
                },
            )
            set_language(rec, s.meta["language"])
            rec.keep(self.name)
            out.append(rec)
        return out
