"""The math recipe's typed working items: what flows between its stages, field by field.

A problem is a ``MathProblem`` (from a file, the CHAMP set, or written by the model; a synthetic one
has no gold ``answer`` until the majority vote settles it). Each gets K ``MathSolution``s
(chain-of-thought, or code-interleaved with the sandbox's outputs in the text), which carry their
grade. A solution picked for step verification becomes one ``StepPrefix`` per step, which carries
the outcomes of the rollouts from that step. Rows that are exported stay ``SFTRecord`` /
``PreferenceRecord`` / ``StepLabelRecord``: the stages that end a branch build them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from synth.records import Item, Message, NonEmpty, register_kind

CAPABILITY = "math"


@register_kind
class MathProblem(Item):
    """A problem and its gold answer (None: synthetic, settled later by majority vote)."""

    kind: Literal["math_problem"] = "math_problem"
    problem: NonEmpty
    answer: str | None = None
    source: str = ""  # the file (and line), "champ", or "synthetic"
    skill: str | None = None  # the taxonomy skill a synthetic problem exercises
    seed_id: str | None = None  # the problem a synthetic one was written from

    @property
    def synthetic(self) -> bool:
        return self.seed_id is not None

    def as_prompt(self) -> list[Message]:
        return [Message(role="user", content=self.problem)]


@register_kind
class MathSolution(Item):
    """One sampled solution of a problem: its text (with code outputs, for code-interleaved ones),
    the gold answer it is graded against, and the grade."""

    kind: Literal["math_solution"] = "math_solution"
    problem_id: str
    problem: str
    answer: str | None  # gold (None until a synthetic problem's vote settles it)
    synthetic: bool = False
    sample: int = 0
    mode: Literal["cot", "code", "correction"] = "cot"
    text: str = ""
    pending_code: bool = False  # code mode: the text ends with a Python block not yet run
    executions: list[dict[str, Any]] = Field(default_factory=list)  # code mode: each sandbox run
    extracted: str | None = None  # the final answer found in the text
    form: str | None = None  # where it was found (boxed, answer_is, ...)
    correct: bool | None = None
    corrects: str | None = None  # correction mode: the id of the wrong solution it corrects
    feedback: str | None = None  # correction mode: what the model was told about that solution
    wrong_text: str | None = None  # correction mode: the wrong solution's text

    @property
    def group_key(self) -> str:
        return self.problem_id


@register_kind
class StepPrefix(Item):
    """Step ``index`` of a solution split into ``steps``: the rollouts continue the solution from the
    end of this step (``steps[: index + 1]``); ``outcomes`` says which reached the gold answer. The
    last step (``terminal``) is not rolled out: its label is the solution's own correctness."""

    kind: Literal["math_step"] = "math_step"
    solution_id: str
    problem_id: str
    problem: str
    answer: str
    mode: str = "cot"
    steps: list[str]
    index: int
    terminal: bool = False
    solution_correct: bool
    outcomes: list[bool] = Field(default_factory=list)
    rollout_answers: list[str | None] = Field(default_factory=list)
    prompt_tokens: int = 0  # the rollout prompt's tokens (the shared prefix), from the engine

    @property
    def group_key(self) -> str:
        return self.solution_id

    @property
    def prefix(self) -> str:
        return join_steps(self.steps[: self.index + 1])


def join_steps(steps: list[str]) -> str:
    """Steps back into solution text, each on its own line(s); a prefix ends with a newline so the
    continuation starts a new step."""
    return "".join(s.rstrip("\n") + "\n" for s in steps)
