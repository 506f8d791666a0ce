"""Repair: the failing code, its tests and the feedback (lint report, traceback, failing assert) go back
to the model, which fixes the solution or the tests.

Round r reads the candidates that execution round r-1 rejected. The rule: python blocks of the reply
are sorted into solution or tests (``split_repair``); what is not in the reply stays as it was; a reply
that changes neither is rejected ('no_change') and the candidate stops there. A repaired candidate
loses its failed execution verdict (kept in ``attempts``) so the next execution round judges it afresh.
A failure that is not the model's ('sandbox_error') is not asked about: it passes through rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

from synth.engines.base import Completion
from synth.stages.code.common import CodeStage, block
from synth.stages.code.execute import NOT_REPAIRABLE
from synth.stages.code.extract import split_repair
from synth.stages.code.items import Candidate


@dataclass(kw_only=True)
class Repair(CodeStage):
    """Repair round ``repair_round`` (stage ``repair_round{n}``; ``round`` is the post-training round)."""

    name: str = ""
    repair_round: int = 1
    template = "code/repair"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = self.name or f"repair_round{self.repair_round}"

    def asks(self, cand: Candidate) -> bool:
        return bool(cand.attempts) and cand.attempts[-1].reason not in NOT_REPAIRABLE

    def variables(self, cand: Candidate) -> dict[str, str | None]:
        last = cand.attempts[-1]
        reasons = self.prompt.data["reasons"]
        return {
            "problem": cand.problem,
            "code": block(cand.code) if cand.code else None,
            "why": reasons.get(last.reason, last.reason),
            "feedback": last.feedback,
            "tests": block(cand.tests) if cand.tests else None,
        }

    def parse(self, cand: Candidate, reply: Completion, j: int, messages) -> Candidate:
        rec = cand.model_copy(deep=True)
        rec.verdicts = [v for v in rec.verdicts if not v.stage.startswith("execute_round")]
        code, tests = split_repair(reply.text)
        new_code, new_tests = code or rec.code, tests or rec.tests
        rec.repairs.append(reply.text)
        if new_code == rec.code and new_tests == rec.tests:
            rec.reject(self.name, "no_change")
        else:
            rec.code, rec.tests, rec.repair_round = new_code, new_tests, self.repair_round
        return rec
