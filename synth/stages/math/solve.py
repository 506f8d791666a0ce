"""Solving: K chain-of-thought solutions per problem, and K code-interleaved ones whose Python blocks
run in the sandbox with their output fed back into the reasoning.

- ``Solve``: problems -> ``sampling.n`` ``MathSolution``s each (ids ``{problem}-s{j}``), in the
  format of ``synth/prompts/math/solve.yaml`` (one step per line, the answer in ``\\boxed{}``). A
  blank reply is kept as an ``Unparsed`` rejection ('empty_reply').
- ``SolveWithCode`` (ids ``{problem}-c{j}``, ``math/solve_code.yaml``): generation stops at
  "```output"; a solution whose text ends with a ```python block is ``pending_code``.
- ``RunCode`` (stage ``code_run_{r}``): each pending solution's Python runs in the sandbox (its
  earlier blocks first, their prints silenced, so names they define are there) and the output (or the
  error's last lines) is appended as an ```output block. A failing program is not a rejection: the
  model reads the traceback, as it would any output. Only a sandbox failure rejects ('sandbox_error').
  Solutions with nothing to run pass through.
- ``ContinueCode`` (stage ``code_continue_{r}``): the model continues each solution that has just
  had an output appended, from its text so far (an assistant prefix the engine continues), and stops
  again at the next "```output". After the last round a solution is graded as it stands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sandboxes import Job, Result
from synth.engines.base import Completion
from synth.prompts import load_prompt
from synth.records import Record
from synth.stages.execute import ExecuteStage
from synth.stages.llm import LLMStage, Reject
from synth.stages.math.items import CAPABILITY, MathProblem, MathSolution

OUTPUT_CHARS = 800  # of a program's output fed back into the solution
_PY_BLOCK = re.compile(r"```(?:python|py)[^\n]*\n(.*?)```", re.DOTALL)
_ENDS_WITH_BLOCK = re.compile(r"```(?:python|py)[^\n]*\n(?:(?!```).)*```\s*$", re.DOTALL)
_SILENCED = """import contextlib as _c, io as _io
with _c.redirect_stdout(_io.StringIO()):
    exec(compile({earlier!r}, "<earlier blocks>", "exec"), globals())
"""


def ends_with_code(text: str) -> bool:
    """The text ends with a complete ```python block (no output after it yet)."""
    return bool(_ENDS_WITH_BLOCK.search(text))


def program(text: str) -> str | None:
    """The program that runs the text's last Python block: earlier blocks first, silenced."""
    blocks = _PY_BLOCK.findall(text)
    if not blocks:
        return None
    last = blocks[-1]
    earlier = "\n".join(blocks[:-1])
    return (_SILENCED.format(earlier=earlier) if earlier.strip() else "") + last


def output_block(result: Result) -> str:
    """What the model reads back: the program's stdout, or the last lines of its error."""
    if result.status in ("ok", "output_limit"):
        out = result.stdout.strip() or "(no output)"
    elif result.timed_out:
        out = f"TimeoutError: the program ran longer than {result.wall_s:.0f}s"
    else:
        lines = (
            result.stderr.strip() or result.stdout.strip() or f"exit code {result.exit_code}"
        ).splitlines()
        out = "\n".join(lines[-3:])
    if len(out) > OUTPUT_CHARS:
        out = out[: OUTPUT_CHARS // 2] + "\n...\n" + out[-OUTPUT_CHARS // 2 :]
    return f"```output\n{out}\n```\n"


@dataclass(kw_only=True)
class Solve(LLMStage):
    """Problems -> K chain-of-thought solutions each."""

    name: str = "solve"
    capability: str = CAPABILITY
    template: str = "math/solve"
    mode: str = "cot"
    tag: str = "s"

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = load_prompt(self.template)

    def variables(self, prob: MathProblem) -> dict[str, str]:
        return {"problem": prob.problem}

    def output_id(self, prob: MathProblem, j: int) -> str:
        return f"{prob.id}-{self.tag}{j}"

    def parse(self, prob: MathProblem, reply: Completion, j: int, messages: Any) -> MathSolution:
        if not reply.text.strip():
            raise Reject("empty_reply")
        return MathSolution(
            id=self.output_id(prob, j),
            problem_id=prob.id,
            problem=prob.problem,
            answer=prob.answer,
            synthetic=prob.synthetic,
            sample=j,
            mode=self.mode,  # type: ignore[arg-type]
            text=reply.text.strip("\n") + "\n",
            pending_code=self.mode == "code" and ends_with_code(reply.text),
            meta={"finish_reason": reply.finish_reason, "completion_tokens": reply.completion_tokens},
        )


@dataclass(kw_only=True)
class SolveWithCode(Solve):
    """Problems -> K code-interleaved solutions each (sampling stops at "```output")."""

    name: str = "solve_code"
    template: str = "math/solve_code"
    mode: str = "code"
    tag: str = "c"


@dataclass(kw_only=True)
class RunCode(ExecuteStage):
    """Round ``code_round``: run each pending solution's last Python block and append its output."""

    name: str = ""
    code_round: int = 0

    def __post_init__(self) -> None:
        self.name = self.name or f"code_run_{self.code_round}"

    def __call__(self, items: list[MathSolution]) -> list[Record]:
        pending = [s for s in items if s.pending_code]
        ran = {id(r): r for r in super().__call__(pending)} if pending else {}
        out: list[Record] = []
        for s in items:
            if id(s) not in ran:
                s.keep(self.name)
            out.append(s)
        return out

    def job(self, sol: MathSolution) -> Job:
        code = program(sol.text)
        if code is None:
            raise Reject("no_code")
        return Job(files={"main.py": code}, language="python", entry="main.py", limits=self.sandbox.limits)

    def verdict(self, sol: MathSolution, result: Result) -> str | None:
        return "sandbox_error" if result.status == "error" else None

    def record(
        self, sol: MathSolution, result: Result | None, reason: str | None, detail: str = ""
    ) -> MathSolution:
        if result is not None and reason is None:
            sol.text = sol.text.rstrip("\n") + "\n" + output_block(result)
            # no timings: a row is the same whenever (and however often) it is computed
            sol.executions.append(
                {"round": self.code_round, "status": result.status, "exit_code": result.exit_code}
            )
        sol.pending_code = False
        return sol


@dataclass(kw_only=True)
class ContinueCode(LLMStage):
    """Round ``code_round``: continue each solution that got an output in this round's ``RunCode``."""

    name: str = ""
    capability: str = CAPABILITY
    code_round: int = 0

    def __post_init__(self) -> None:
        self.name = self.name or f"code_continue_{self.code_round}"
        if self.prompt is None:
            self.prompt = load_prompt("math/solve_code")

    def asks(self, sol: MathSolution) -> bool:
        return any(e["round"] == self.code_round for e in sol.executions) and sol.text.rstrip().endswith(
            "```"
        )

    def messages(self, sol: MathSolution) -> list[dict[str, str]]:
        assert self.prompt is not None
        return [*self.prompt.messages(problem=sol.problem), {"role": "assistant", "content": sol.text}]

    def output_id(self, sol: MathSolution, j: int) -> str:
        return sol.id

    def parse(self, sol: MathSolution, reply: Completion, j: int, messages: Any) -> MathSolution:
        sol.text = sol.text + reply.text.lstrip("\n").rstrip("\n") + "\n"
        sol.pending_code = ends_with_code(sol.text)
        sol.meta["completion_tokens"] = sol.meta.get("completion_tokens", 0) + reply.completion_tokens
        sol.meta["finish_reason"] = reply.finish_reason
        return sol
