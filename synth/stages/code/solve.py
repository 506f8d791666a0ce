"""Solving: K sampled Python solutions per problem, each a ``Candidate`` carried through the repair
loop: its ``code`` and ``tests`` (what runs next), ``repair_round`` (the repair round that produced
them; ``provenance.round`` is the post-training round) and ``attempts`` (every executed version with its
verdict and feedback). A reply without code is still a candidate (execution rejects it as 'no_code', and
a repair round may fix it)."""

from __future__ import annotations

from dataclasses import dataclass

from synth.engines.base import Completion
from synth.stages.code.common import CodeStage
from synth.stages.code.extract import extract_code
from synth.stages.code.items import Candidate, Problem


@dataclass(kw_only=True)
class Solve(CodeStage):
    """Problems -> K candidates each (ids ``{problem}-s{j}``)."""

    name: str = "solve"
    template = "code/solve"

    def output_id(self, prob: Problem, j: int) -> str:
        return f"{prob.id}-s{j}"

    def variables(self, prob: Problem) -> dict[str, str]:
        return {"problem": prob.problem}

    def parse(self, prob: Problem, reply: Completion, j: int, messages) -> Candidate:
        return Candidate(
            id=self.output_id(prob, j),
            problem_id=prob.id,
            snippet_id=prob.snippet_id,
            problem=prob.problem,
            sample=j,
            code=extract_code(reply.text),
            reply=reply.text,
            meta={"finish_reason": reply.finish_reason},
        )
