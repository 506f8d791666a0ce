"""The code recipe's typed working items: what flows between its stages, field by field.

A corpus file is a ``Snippet``; the model turns it into ``Problem``s; each problem gets K
``Candidate``s, which carry their code, tests, repair round and every executed ``Attempt`` through the
repair loop (grouped by problem for solutions and pairs). The translation branch carries a ``Translation``
(the solution's recorded ``IOCase``s, then the translated code), backtranslation a ``Backtranslation``
(code, its documentation, the code written back). Rows that are exported stay ``SFTRecord`` /
``PreferenceRecord``: the stages that end a branch build them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from synth.records import Item, Message, NonEmpty, register_kind


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _repair_round() -> Any:
    """The repair round (0: the first try), never the post-training round (``provenance.round``); rows
    stored before the rename called it ``round``."""
    return Field(0, validation_alias=AliasChoices("repair_round", "round"))


class Attempt(_Part):
    """One executed version of a candidate and its verdict (``reason`` None: it passed)."""

    repair_round: int = _repair_round()
    code: str | None
    tests: str | None
    passed: bool
    reason: str | None = None
    feedback: str = ""  # what a repair round is told: lint report, traceback, failing assert
    lint: list[str] = Field(default_factory=list)


class IOCase(_Part):
    """A call of a passing solution with plain-JSON arguments and result, recorded in the sandbox."""

    fn: str
    args: list[Any]
    result: Any


@register_kind
class Snippet(Item):
    """A corpus file that inspires problems (id: its path with dots, e.g. ``pkg.module``)."""

    kind: Literal["code_snippet"] = "code_snippet"
    path: str
    code: str


@register_kind
class Problem(Item):
    """A self-contained programming problem written from a snippet."""

    kind: Literal["code_problem"] = "code_problem"
    snippet_id: str
    problem: NonEmpty

    def as_prompt(self) -> list[Message]:
        return [Message(role="user", content=self.problem)]


@register_kind
class Candidate(Item):
    """One sampled solution of a problem on its way through tests, execution and repair."""

    kind: Literal["code_candidate"] = "code_candidate"
    problem_id: str
    snippet_id: str
    problem: str
    sample: int = 0
    code: str | None = None  # None: the reply held no code ('no_code')
    tests: str | None = None
    repair_round: int = _repair_round()  # the repair round that produced ``code`` / ``tests``
    reply: str = ""  # the solve reply
    tests_reply: str | None = None
    repairs: list[str] = Field(default_factory=list)  # the repair replies, round 1, 2, ...
    attempts: list[Attempt] = Field(default_factory=list)
    last_run: dict[str, Any] | None = None  # the last sandbox result, without its output

    @property
    def group_key(self) -> str:
        return self.problem_id

    @property
    def outcome(self) -> str:
        if not self.kept:
            return "never_passed"
        if self.repair_round == 0:
            return "passed_first_try"
        return f"passed_after_repair_{self.repair_round}"

    @property
    def last_failure(self) -> str | None:
        if any(v.reason == "no_change" for v in self.verdicts):
            return "no_change"
        return self.attempts[-1].reason if self.attempts else None


@register_kind
class Translation(Item):
    """A passing solution with its recorded I/O cases, then (``language`` set) its translation."""

    kind: Literal["code_translation"] = "code_translation"
    solution_id: str
    problem_id: str
    python: str
    cases: list[IOCase]
    language: str | None = None
    request: str | None = None  # the prompt that asked for the translation (the SFT row's user turn)
    code: str | None = None
    reply: str | None = None


@register_kind
class Backtranslation(Item):
    """Code (a corpus file or a passing solution), its documentation, and code written back from it."""

    kind: Literal["code_backtranslation"] = "code_backtranslation"
    code: str
    source: str  # corpus path or solution id
    request: str  # the short user turn of the SFT row: "Document this code: ..."
    doc: str
    regenerated: str | None = None
