"""Settling and grading answers.

- ``Vote`` (grouped by problem): a synthetic problem has no gold answer; the most common final answer
  of its solutions (equivalent answers count together) becomes its answer when at least
  ``min_agreement`` of its solutions give it, and at least ``MIN_VOTES`` (OpenMathInstruct-2 keeps
  synthetic problems by majority agreement). Below that, every solution of the problem is rejected
  'low_agreement'. Solutions of problems with a gold answer pass through.
- ``GradeStage``: each solution against its gold answer (``synth.stages.math.grading``): kept when
  correct, else rejected 'no_answer', 'wrong_answer' or 'timeout'. The grade is written on the row
  (``extracted``, ``form``, ``correct``) either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from synth.records import Record
from synth.stages.math.grading import GraderPool, extract_answer, grade_all, majority
from synth.stages.math.items import MathSolution
from synth.stages.select import group_by_prompt

MIN_VOTES = 2


@dataclass
class Vote:
    """Solutions (whole problems, ``Run.grouped``) -> the same solutions, synthetic ones with the
    majority answer as gold, or rejected 'low_agreement'."""

    pool: GraderPool | None = None
    min_agreement: float = 0.5
    name: str = "vote"

    def __call__(self, solutions: list[MathSolution]) -> list[Record]:
        out: list[Record] = []
        for group in group_by_prompt(solutions).values():  # type: ignore[arg-type]
            if any(s.answer is not None for s in group):
                for s in group:
                    s.keep(self.name)
                out += group
                continue
            found = [extract_answer(s.text) for s in group]
            same = self.pool.compare if self.pool is not None else None
            answer, votes = majority([f[0] if f else None for f in found], same)
            agreement = votes / len(group)
            settled = answer is not None and votes >= MIN_VOTES and agreement >= self.min_agreement
            for s in group:
                s.scores["agreement"] = round(agreement, 4)
                s.meta["vote"] = {"answer": answer, "votes": votes, "of": len(group)}
                if settled:
                    s.answer = answer
                    s.keep(self.name)
                else:
                    s.reject(self.name, "low_agreement")
            out += group
        return out


@dataclass
class GradeStage:
    """Solutions -> the same solutions, graded: kept when correct."""

    pool: GraderPool | None = None
    timeout: float = 5.0
    name: str = "grade"

    def __call__(self, solutions: list[MathSolution]) -> list[Record]:
        grades = grade_all([(s.text, s.answer or "") for s in solutions], self.pool, self.timeout)
        for s, g in zip(solutions, grades, strict=True):
            s.extracted, s.form, s.correct = g.extracted, g.form, g.correct
            if s.answer is None:  # cannot happen after Vote; guard against a recipe without it
                s.reject(self.name, "no_gold_answer")
            elif g.correct:
                s.keep(self.name, g.form)
            else:
                s.reject(self.name, g.reason or "wrong_answer")
        return list(solutions)
