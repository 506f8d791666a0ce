"""Solving: K sampled Python solutions per problem, each a candidate carried through the repair loop.

A candidate's state lives in ``meta``: ``code`` and ``tests`` (what runs next), ``round`` (the repair
round that produced them) and ``attempts`` (every executed version with its verdict and feedback).
"""

from __future__ import annotations

from dataclasses import dataclass

from synth.engines.base import Engine, SamplingParams
from synth.records import Message, SFTRecord
from synth.stages.code.common import ask, provenance
from synth.stages.code.extract import extract_code

TEMPLATE = "code_solve"
SYSTEM = "You are an expert Python programmer. You write correct, simple, self-contained code."


def solve_prompt(problem: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": f"{problem}\n\nWrite a Python solution. Give the complete code in one ```python block.",  # noqa: E501
        },
    ]


@dataclass
class Solve:
    engine: Engine
    sampling: SamplingParams  # n = K solutions per problem
    stage: str = "solve"

    def __call__(self, problems: list[SFTRecord]) -> list[SFTRecord]:
        replies = ask(self.engine, [solve_prompt(p.meta["problem"]) for p in problems], self.sampling)
        out = []
        for prob, comps in zip(problems, replies, strict=True):
            for j, comp in enumerate(comps):
                messages = [Message(role="user", content=prob.meta["problem"])]
                if comp.text.strip():
                    messages.append(Message(role="assistant", content=comp.text))
                rec = SFTRecord(
                    id=f"{prob.id}-s{j}",
                    messages=messages,
                    provenance=provenance(
                        self.engine,
                        self.sampling,
                        TEMPLATE,
                        prob.provenance.source if prob.provenance else None,
                    ),
                    meta={
                        "problem_id": prob.id,
                        "snippet_id": prob.meta.get("snippet_id"),
                        "problem": prob.meta["problem"],
                        "sample": j,
                        "finish_reason": comp.finish_reason,
                        "code": extract_code(comp.text),
                        "tests": None,
                        "round": 0,
                        "attempts": [],
                    },
                )
                rec.keep(self.stage)
                out.append(rec)
        return out
