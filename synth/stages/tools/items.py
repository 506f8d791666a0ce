"""The tools recipe's typed working items.

A tool of the run is a ``ToolSpec`` (its OpenAI function schema and how it runs). The model writes
``ToolTask``s from them: a request that needs one call (single-step), at least two (multi-step), or,
from a user function's documentation, a request with its call (APIGen). Each task gets K
``ToolTrace``s: the conversation in OpenAI's shape (the user's request, assistant turns with
``tool_calls``, ``tool`` turns with the executed results, the final answer) with a ``CallRecord``
for every call the model made, executed or not, and why it failed when it did.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from synth.records import Item, Message, NonEmpty, register_kind

Mode = Literal["single", "multi", "apigen"]
Executor = Literal["python", "calculator", "search", "function"]


class CallRecord(BaseModel):
    """One call a trace made: what was called, at which step, and what came of it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    step: int
    name: str
    arguments: str  # JSON text
    executor: str | None = None  # None: no such tool
    ok: bool
    reason: str | None = None  # why the call failed (None: it ran)
    output: str = ""  # the result (or the error) the model was shown / would have been shown


@register_kind
class ToolSpec(Item):
    """A tool the run offers (id: its name)."""

    kind: Literal["tool_spec"] = "tool_spec"
    name: NonEmpty
    executor: Executor
    function: dict[str, Any]  # the OpenAI function schema: {"type": "function", "function": {...}}
    source: str | None = None  # the file a user function comes from
    source_hash: str | None = None  # of that file's text (a resumed run over an edited file is refused)

    @property
    def description(self) -> str:
        return self.function["function"].get("description", "")

    @property
    def parameters(self) -> dict[str, Any]:
        return self.function["function"].get("parameters", {"type": "object", "properties": {}})


@register_kind
class ToolTask(Item):
    """A request for the model to answer with tools (written for ``tool``)."""

    kind: Literal["tool_task"] = "tool_task"
    query: NonEmpty
    mode: Mode
    tool: str
    min_calls: int = 1


@register_kind
class ToolTrace(Item):
    """One sampled answer to a task: the conversation so far and every call it made."""

    kind: Literal["tool_trace"] = "tool_trace"
    task_id: str
    query: str
    mode: Mode
    tool: str
    min_calls: int = 1
    sample: int = 0
    messages: list[Message]  # OpenAI's shape, from the user's request on
    calls: list[CallRecord] = Field(default_factory=list)
    pending: bool = False  # the last assistant turn's call has not run yet
    failure: str | None = None  # the reason the trace failed, where it did
    failed_turn: str | None = None  # the raw text of a turn that could not be read (bad JSON, ...)

    @property
    def group_key(self) -> str:
        return self.task_id

    @property
    def step(self) -> int:
        """The number of assistant turns so far."""
        return sum(1 for m in self.messages if m.role == "assistant")

    @property
    def answer(self) -> str | None:
        last = self.messages[-1]
        return last.content if last.role == "assistant" and not last.tool_calls else None

    @property
    def awaits_answer(self) -> bool:
        """The last turn is a tool result: the model's next turn is due."""
        return self.messages[-1].role == "tool" and not self.pending
