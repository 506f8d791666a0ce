"""Repair: the failing code, its tests and the feedback (lint report, traceback, failing assert) go back
to the model, which fixes the solution or the tests.

The rule: python blocks of the reply are sorted into solution or tests (``split_repair``); what is not
in the reply stays as it was; a reply that changes neither is rejected ('no_change') and the candidate
stops there. A repaired candidate loses its failed execution verdict (kept in ``meta['attempts']``) so the
next execution round judges it afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from synth.engines.base import Engine, SamplingParams
from synth.records import SFTRecord
from synth.stages.code.common import ask
from synth.stages.code.extract import fence, split_repair
from synth.stages.code.solve import solve_prompt

TEMPLATE = "code_repair"
REASON_TEXT = {
    "no_code": "your answer contained no code",
    "syntax_error": "the code has a syntax error",
    "lint": "static analysis found errors in the code",
    "no_tests": "there were no tests",
    "tests_syntax_error": "the tests have a syntax error",
    "weak_tests": "the tests do not check the solution",
    "test_failed": "a test assertion failed",
    "runtime_error": "running the tests raised an error",
    "timeout": "the program ran too long",
    "oom": "the program ran out of memory",
    "output_limit": "the program printed too much",
}


def repair_messages(cand: SFTRecord) -> list[dict[str, str]]:
    last = cand.meta["attempts"][-1]
    code, tests = cand.meta.get("code"), cand.meta.get("tests")
    shown_tests = fence(tests) if tests else "(none)"
    why = REASON_TEXT.get(last["reason"], last["reason"])
    msgs = solve_prompt(cand.meta["problem"])
    msgs.append({"role": "assistant", "content": fence(code) if code else "(no code)"})
    msgs.append(
        {
            "role": "user",
            "content": f"This failed: {why}.\n\n{last['feedback']}\n\nThe tests were:\n{shown_tests}\n\n"
            "Fix the solution (or the tests, if they are wrong). Reply with the fixed solution in one "
            "```python block; if you fix the tests, put them in a second ```python block that starts "
            "with `# tests`.",
        }
    )
    return msgs


@dataclass
class Repair:
    engine: Engine
    sampling: SamplingParams
    stage: str
    round: int

    def __call__(self, failed: list[SFTRecord]) -> list[SFTRecord]:
        replies = ask(self.engine, [repair_messages(c) for c in failed], self.sampling)
        out = []
        for cand, comps in zip(failed, replies, strict=True):
            rec = cand.model_copy(deep=True)
            rec.verdicts = [v for v in rec.verdicts if not v.stage.startswith("execute_round")]
            text = comps[0].text
            code, tests = split_repair(text)
            new_code = code or rec.meta.get("code")
            new_tests = tests or rec.meta.get("tests")
            rec.meta.setdefault("repairs", []).append({"round": self.round, "reply": text})
            if new_code == rec.meta.get("code") and new_tests == rec.meta.get("tests"):
                rec.reject(self.stage, "no_change")
            else:
                rec.meta.update(code=new_code, tests=new_tests, round=self.round)
                rec.keep(self.stage)
            out.append(rec)
        return out
