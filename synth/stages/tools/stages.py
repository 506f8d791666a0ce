"""The tools recipe's stages: requests, ReAct turns, executed calls, checks, rows and pairs.

- ``WriteQueries`` (LLM; ``tools/query`` or ``tools/multi_query``): a tool -> requests that need one
  call of it (ids ``{tool}-q{j}``) or at least two calls (``{tool}-m{j}``); 'no_request' when the reply
  holds none.
- ``Act`` (LLM; ``tools/act``; stage ``act_{step}``): the model's next turn of each trace, the
  conversation rendered with the tools by ``synth.chat.tool_fallback`` and generation stopped after a
  call. Step 0 starts K traces per request (ids ``{request}-t{j}``); later steps continue traces whose
  last turn is a tool result. A call that cannot be read is rejected: 'bad_json', 'bad_format',
  'empty_reply'; an answer cut at ``max_tokens`` is 'truncated'. With ``structured`` (the recipe's
  ``--structured-calls``) the turn is asked for under :func:`turn_schema` (a call of a listed tool with
  arguments that fit its schema, or ``{"answer": ...}``): constrained decoding on vLLM and an OpenAI
  server, validate-and-retry on ``hf``; an ``{"answer": ...}`` reply is read as the answer's text.
- ``ExecuteCalls`` (the execution stage kind; stage ``execute_{step}``): each trace's pending call is
  checked and run (``synth.stages.tools.registry``): 'unknown_tool', 'schema_violation',
  'execution_error', 'timeout', 'sandbox_error'; a call that ran adds the ``tool`` turn with its result.
- ``Check`` (stage ``check``): a kept trace must end with an answer ('step_limit': it was still
  calling when the steps ran out), after at least one call ('no_tool_call') and, for a multi-step
  request, at least two ('too_few_calls').
- APIGen (function calling from documentation): ``WriteCalls`` (LLM; ``tools/apigen``; stage
  ``apigen_generate``) writes a request and its call from a user function's schema (format check:
  'no_query', 'no_call', 'bad_json', 'bad_format'), ``FormatCheck`` checks the call against the
  function ('wrong_function', 'unknown_tool', 'schema_violation'), ``ExecuteCalls`` runs it (execution
  check), a ``JudgeStage`` rates whether the result answers the request (semantic check), ``Act``
  writes the answer.
- ``TraceRows`` (stage ``sft``): kept traces -> SFT rows in OpenAI's shape with their ``tools``.
- ``ToolPairs`` (stage ``preference_pairs``): per request, a kept trace over a failing one, at the
  turn where the failing one went wrong.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sandboxes import Job, Result
from synth.chat import tool_fallback
from synth.engines.base import Completion
from synth.engines.structured import tool_call_schema
from synth.prompts import load_prompt
from synth.records import Message, PreferenceRecord, Record, Response, SFTRecord, ToolCall, ToolFunction
from synth.stages.execute import ExecuteStage
from synth.stages.llm import LLMStage, Reject
from synth.stages.tools.calls import Call, CallError, parse_call, parse_turn
from synth.stages.tools.items import ToolSpec, ToolTask, ToolTrace
from synth.stages.tools.registry import Execution, Toolbox, record

CAPABILITY = "tools"
# a trace that failed at one of these never had every call well-formed, schema-valid and executed
CALL_FAILURES = ("bad_json", "bad_format", "unknown_tool", "schema_violation", "wrong_function",
                 "execution_error", "timeout", "sandbox_error")  # fmt: skip
_REQUEST = re.compile(r"request\s*:\s*(.+)", re.IGNORECASE | re.DOTALL)
_QUERY = re.compile(r"query\s*:\s*(.+?)\s*(?:\n|$)", re.IGNORECASE)
_CALL = re.compile(r"call\s*:\s*(.+)", re.IGNORECASE | re.DOTALL)


def arguments_text(spec: ToolSpec) -> str:
    """A tool's arguments in a line: ``path (string), text (string, optional)``."""
    params = spec.parameters
    required = set(params.get("required", []))
    parts = []
    for name, schema in params.get("properties", {}).items():
        kind = schema.get("type", "any")
        kind = "/".join(kind) if isinstance(kind, list) else kind
        if "enum" in schema:
            kind += " one of " + ", ".join(json.dumps(v) for v in schema["enum"])
        parts.append(f"{name} ({kind}{'' if name in required else ', optional'})")
    return ", ".join(parts) or "none"


def last_call(trace: ToolTrace) -> Call:
    """The call of the trace's last assistant turn."""
    turn = next(m for m in reversed(trace.messages) if m.role == "assistant")
    assert turn.tool_calls, f"{trace.id}: the last assistant turn makes no call"
    fn = turn.tool_calls[0].function
    return Call(fn.name, json.loads(fn.arguments))


def history(trace: ToolTrace) -> list[Call]:
    """The trace's earlier calls of user functions that ran (replayed before its next call)."""
    return [Call(c.name, json.loads(c.arguments)) for c in trace.calls if c.ok and c.executor == "function"]


def call_turn(trace: ToolTrace, call: Call, thought: str = "") -> Message:
    """The assistant turn that makes ``call`` (its id: ``call_{n}``, n-th turn of the trace)."""
    fn = ToolFunction(name=call.name, arguments=call.arguments_json)
    return Message(
        role="assistant", content=thought, tool_calls=[ToolCall(id=f"call_{trace.step}", function=fn)]
    )


def _request(text: str) -> str:
    """The request a reply holds: after 'Request:' (else the whole reply), its first line."""
    m = _REQUEST.search(text)
    found = (m.group(1) if m else text).strip()
    return found.split("\n")[0].strip().strip('"').strip()


# -- requests -----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class WriteQueries(LLMStage):
    """Tools -> synthetic requests that need them (``mode`` "single": one call; "multi": two or more)."""

    name: str = ""
    capability: str = CAPABILITY
    mode: str = "single"
    tools_lines: str = ""  # "- name: description" per tool (multi-step prompts)
    topics: str = ""  # titles of the searchable documents

    def __post_init__(self) -> None:
        self.name = self.name or ("write_queries" if self.mode == "single" else "write_multi_queries")
        if self.prompt is None:
            self.prompt = load_prompt("tools/query" if self.mode == "single" else "tools/multi_query")

    def variables(self, spec: ToolSpec) -> dict[str, Any]:
        topics = self.topics if spec.executor == "search" or self.mode == "multi" else ""
        return {"name": spec.name, "description": spec.description, "parameters": arguments_text(spec),
                "tools": self.tools_lines, "topics": topics}  # fmt: skip

    def output_id(self, spec: ToolSpec, j: int) -> str:
        return f"{spec.id}-{'q' if self.mode == 'single' else 'm'}{j}"

    def parse(self, spec: ToolSpec, reply: Completion, j: int, messages: Any) -> ToolTask:
        query = _request(reply.text)
        if len(query) < 12 or "<tool_call>" in query or "<tool_response>" in query:
            raise Reject("no_request")
        return ToolTask(id=self.output_id(spec, j), query=query, mode=self.mode, tool=spec.name,  # type: ignore[arg-type]
                        min_calls=1 if self.mode == "single" else 2, meta={"sample": j})  # fmt: skip


# -- turns --------------------------------------------------------------------------------------
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 1}},
    "required": ["answer"],
    "additionalProperties": False,
}


def turn_schema(specs: list[ToolSpec]) -> dict[str, Any]:
    """A ReAct turn as structured output: a call of one of ``specs`` (``{"name", "arguments"}``, the
    arguments fitting the tool's schema) or a final answer (``{"answer": "..."}``)."""
    calls = tool_call_schema({s.name: s.parameters for s in specs})
    return {"anyOf": [*calls["oneOf"], ANSWER_SCHEMA]}


def structured_answer(text: str) -> str | None:
    """The answer of a reply that is just ``{"answer": "..."}`` (structured turns), else None."""
    body = text.strip()
    if not body.startswith("{"):
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if isinstance(obj, dict) and set(obj) == {"answer"} and isinstance(obj["answer"], str):
        return obj["answer"].strip() or None
    return None


@dataclass(kw_only=True)
class Act(LLMStage):
    """The model's next turn: step 0 starts ``sampling.n`` traces per request, later steps continue
    the traces that have just received a tool result."""

    name: str = ""
    capability: str = CAPABILITY
    step: int = 0
    toolbox: Toolbox
    structured: bool = False  # replies asked for under turn_schema: {"answer": ...} is an answer

    def __post_init__(self) -> None:
        self.name = self.name or f"act_{self.step}"
        if self.prompt is None:
            self.prompt = load_prompt("tools/act")

    def asks(self, item: Any) -> bool:
        return isinstance(item, ToolTask) or (isinstance(item, ToolTrace) and item.awaits_answer)

    def messages(self, item: ToolTask | ToolTrace) -> list[dict[str, str]]:
        assert self.prompt is not None
        conv: list[dict[str, Any]] = list(self.prompt.messages(query=item.query))
        if isinstance(item, ToolTrace):
            conv += [m.model_dump(exclude_none=True) for m in item.messages[1:]]
        return tool_fallback(conv, self.toolbox.schemas())

    def output_id(self, item: ToolTask | ToolTrace, j: int) -> str:
        return f"{item.id}-t{j}" if isinstance(item, ToolTask) else item.id

    def _trace(self, item: ToolTask | ToolTrace, j: int) -> ToolTrace:
        if isinstance(item, ToolTrace):
            return item
        first = Message(role="user", content=item.query)
        return ToolTrace(id=self.output_id(item, j), task_id=item.id, query=item.query, mode=item.mode,
                         tool=item.tool, min_calls=item.min_calls, sample=j, messages=[first],
                         meta={"prompt_id": item.id})  # fmt: skip

    def parse(self, item: ToolTask | ToolTrace, reply: Completion, j: int, messages: Any) -> ToolTrace:
        trace = self._trace(item, j)
        if self.structured:
            if reply.extra.get("structured_error"):  # still invalid after the engine's retries
                trace.meta.setdefault("structured_errors", []).append(reply.extra["structured_error"])
            answer = structured_answer(reply.text)
            if answer is not None:
                trace.messages.append(Message(role="assistant", content=answer))
                trace.meta["answer_format"] = "json"
                return trace
        try:
            turn = parse_turn(reply.text, self.toolbox.names)
        except CallError as e:
            trace.failure, trace.failed_turn = e.reason, reply.text
            trace.meta["failure_detail"] = e.detail
            trace.reject(self.name, e.reason)
            return trace
        if turn.calls:
            trace.messages.append(call_turn(trace, turn.calls[0], turn.thought))
            trace.pending = True
            trace.meta.setdefault("call_formats", []).append(turn.format)
        elif reply.finish_reason == "length":
            trace.failure, trace.failed_turn = "truncated", reply.text
            trace.reject(self.name, "truncated")
        else:
            trace.messages.append(Message(role="assistant", content=turn.thought))
        return trace


# -- execution ----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ExecuteCalls(ExecuteStage):
    """Step ``step``: check and run each trace's pending call. Python programs and user functions run
    as sandbox jobs (the base's batch, in parallel); the calculator and search run here. Traces with
    nothing pending pass through."""

    name: str = ""
    step: int = 0
    toolbox: Toolbox
    _done: dict[str, Execution] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or f"execute_{self.step}"

    def __call__(self, traces: list[ToolTrace]) -> list[Record]:
        self._done = {}
        pending = [t for t in traces if isinstance(t, ToolTrace) and t.pending]
        for t in pending:
            call = last_call(t)
            found = self.toolbox.validate(call) or self.toolbox.local(call)
            if found is not None:
                self._done[t.id] = found
        sandboxed = [t for t in pending if t.id not in self._done]
        ran = {id(r) for r in super().__call__(sandboxed)} if sandboxed else set()
        for t in traces:
            if id(t) in ran:
                continue
            reason = self._apply(t, self._done[t.id]) if t.id in self._done else None
            if reason:
                t.reject(self.name, reason)
            else:
                t.keep(self.name)
        return traces

    def job(self, trace: ToolTrace) -> Job:
        return self.toolbox.job(last_call(trace), history(trace))

    def verdict(self, trace: ToolTrace, result: Result) -> str | None:
        self._done[trace.id] = self.toolbox.outcome(last_call(trace), result)
        return self._done[trace.id].reason

    def record(
        self, trace: ToolTrace, result: Result | None, reason: str | None, detail: str = ""
    ) -> ToolTrace:
        self._apply(trace, self._done.get(trace.id) or Execution(detail or "not run", reason))
        return trace

    def _apply(self, trace: ToolTrace, execution: Execution) -> str | None:
        """Record the call's execution; a call that ran adds its ``tool`` turn."""
        call = last_call(trace)
        turn = next(m for m in reversed(trace.messages) if m.role == "assistant")
        trace.calls.append(record(trace.step - 1, call, execution, self.toolbox))
        trace.pending = False
        if execution.ok:
            content = execution.output.strip() or "(empty result)"
            tool_id = turn.tool_calls[0].id if turn.tool_calls else None
            trace.messages.append(Message(role="tool", content=content, tool_call_id=tool_id, name=call.name))
        else:
            trace.failure = execution.reason
        return execution.reason


# -- APIGen: calls from documentation -----------------------------------------------------------
@dataclass(kw_only=True)
class WriteCalls(LLMStage):
    """User functions -> a request and its call each (``sampling.n`` per function; ids ``{fn}-a{j}``);
    the reply's format is APIGen's first check."""

    name: str = "apigen_generate"
    capability: str = CAPABILITY

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = load_prompt("tools/apigen")

    def variables(self, spec: ToolSpec) -> dict[str, Any]:
        return {"name": spec.name, "schema": json.dumps(spec.function, ensure_ascii=False)}

    def output_id(self, spec: ToolSpec, j: int) -> str:
        return f"{spec.id}-a{j}"

    def parse(self, spec: ToolSpec, reply: Completion, j: int, messages: Any) -> ToolTrace:
        text = reply.text
        query = _QUERY.search(text)
        if not query or len(query.group(1).strip()) < 8:
            raise Reject("no_query")
        found = _CALL.search(text[query.end() :]) or _CALL.search(text)
        if not found:
            raise Reject("no_call")
        try:
            call = parse_call(found.group(1))
        except CallError as e:
            raise Reject(e.reason, e.detail) from None
        trace = ToolTrace(id=self.output_id(spec, j), task_id=self.output_id(spec, j),
                          query=query.group(1).strip().strip('"'), mode="apigen", tool=spec.name, sample=j,
                          messages=[], pending=True, meta={"prompt_id": self.output_id(spec, j)})  # fmt: skip
        trace.messages = [Message(role="user", content=trace.query), call_turn(trace, call)]
        return trace


@dataclass
class FormatCheck:
    """APIGen's format check on a generated call: the documented function, arguments that fit it."""

    toolbox: Toolbox
    name: str = "format_check"

    def __call__(self, traces: list[ToolTrace]) -> list[ToolTrace]:
        for t in traces:
            call = last_call(t)
            if call.name != t.tool:
                failed: Execution | None = Execution(f"calls {call.name!r}, not {t.tool!r}", "wrong_function")
            else:
                failed = self.toolbox.validate(call)
            if failed is None:
                t.keep(self.name)
                continue
            t.calls.append(record(0, call, failed, self.toolbox))
            t.failure, t.pending = failed.reason, False
            t.reject(self.name, failed.reason or "format")
        return traces


def semantic_variables(trace: ToolTrace) -> dict[str, str]:
    """The semantic judge's variables: the request, the call, and the result it gave."""
    call = trace.calls[-1]
    return {"query": trace.query, "call": f"{call.name}({call.arguments})", "result": call.output}


# -- checks, rows, pairs ------------------------------------------------------------------------
@dataclass
class Check:
    """A finished trace: an answer after enough executed calls."""

    name: str = "check"

    def __call__(self, traces: list[ToolTrace]) -> list[ToolTrace]:
        for t in traces:
            ran = sum(1 for c in t.calls if c.ok)
            reason = None
            if t.pending or t.answer is None:
                reason = "step_limit"
            elif ran == 0:
                reason = "no_tool_call"
            elif ran < t.min_calls:
                reason = "too_few_calls"
            if reason:
                t.failure = reason
                t.reject(self.name, reason)
            else:
                t.keep(self.name)
        return traces


@dataclass
class TraceRows:
    """Kept traces -> SFT rows: the conversation in OpenAI's shape and the tools it could call."""

    toolbox: Toolbox
    name: str = "sft"

    def __call__(self, traces: list[ToolTrace]) -> list[SFTRecord]:
        out = []
        for t in traces:
            rec = SFTRecord(
                id=t.id,
                messages=list(t.messages),
                tools=self.toolbox.schemas(),
                provenance=t.provenance,
                scores=dict(t.scores),
                verdicts=list(t.verdicts),
                meta={
                    "prompt_id": t.task_id,
                    "mode": t.mode,
                    "tool": t.tool,
                    "calls": [c.name for c in t.calls],
                    "call_formats": t.meta.get("call_formats", []),
                },  # fmt: skip
            )
            rec.keep(self.name)
            out.append(rec)
        return out


def _turn_text(message: Message) -> str:
    """An assistant turn as the fallback renders it (its text and its <tool_call> block)."""
    return tool_fallback([message.model_dump(exclude_none=True)])[0]["content"]


def _same(a: list[Message], b: list[Message]) -> bool:
    return [m.model_dump() for m in a] == [m.model_dump() for m in b]


def failing_turn(trace: ToolTrace) -> tuple[int, str] | None:
    """(index, text) of the turn where a failed trace went wrong: the reply that could not be read,
    the call that failed, or the answer the check refused."""
    if trace.failed_turn is not None:
        return len(trace.messages), trace.failed_turn
    last = len(trace.messages) - 1
    if last >= 1 and trace.messages[last].role == "assistant":
        return last, _turn_text(trace.messages[last])
    return None


@dataclass
class ToolPairs:
    """Per request (run with ``Run.grouped``): a kept trace over a failing one, at the turn where the
    failing one went wrong (the turns before it the same in both; the prompt rendered with the tools
    as ``synth.chat.tool_fallback`` renders it). "significantly_better" when the failing turn's call
    could not run (bad format, unknown tool, schema, execution), "better" when it answered too early."""

    toolbox: Toolbox
    per_prompt: int = 1
    name: str = "preference_pairs"

    def __call__(self, traces: list[Any]) -> list[PreferenceRecord]:
        groups: dict[str, list[ToolTrace]] = {}
        for t in traces:
            if isinstance(t, ToolTrace) and t.mode != "apigen":
                groups.setdefault(t.task_id, []).append(t)
        out = []
        for task_id, group in groups.items():
            good = sorted((t for t in group if t.kept), key=lambda t: t.id)
            bad = sorted((t for t in group if not t.kept and t.failure), key=lambda t: t.id)
            used: set[str] = set()
            for b in bad:
                if len(used) >= self.per_prompt:
                    break
                pair = self._pair(task_id, good, b, used)
                if pair is not None:
                    out.append(pair)
        return out

    def _pair(
        self, task_id: str, good: list[ToolTrace], bad: ToolTrace, used: set[str]
    ) -> PreferenceRecord | None:
        found = failing_turn(bad)
        if found is None:
            return None
        index, rejected = found
        for g in good:
            if g.id in used or len(g.messages) <= index or g.messages[index].role != "assistant":
                continue
            if not _same(g.messages[:index], bad.messages[:index]):
                continue
            chosen = _turn_text(g.messages[index])
            if chosen.strip() == rejected.strip() or not rejected.strip():
                continue
            used.add(g.id)
            prompt = tool_fallback(
                [m.model_dump(exclude_none=True) for m in g.messages[:index]], self.toolbox.schemas()
            )
            strength = "significantly_better" if bad.failure in CALL_FAILURES else "better"
            pair = PreferenceRecord(
                id=f"{task_id}-pair{len(used) - 1}",
                prompt=[Message(role=m["role"], content=m["content"]) for m in prompt],  # type: ignore[arg-type]
                responses=[
                    Response(content=chosen, label="chosen"),
                    Response(content=rejected, label="rejected"),
                ],
                strength=strength,
                provenance=g.provenance,
                meta={
                    "prompt_id": task_id,
                    "chosen_id": g.id,
                    "rejected_id": bad.id,
                    "rejected_reason": bad.failure,
                    "turn": index,
                },  # fmt: skip
            )
            pair.keep(self.name)
            return pair
        return None


# -- the run's outcome --------------------------------------------------------------------------
def outcome_counts(traces: Any, sft: int, pairs: int) -> dict[str, int | float]:
    """The run in a line, from every trace's last row: how many traces made a call, how many had
    every call well-formed, schema-valid and executed (the executable share), what was kept."""
    n = made = executable = 0
    reasons: Counter[str] = Counter()
    for t in traces:
        if not isinstance(t, ToolTrace) or t.mode == "apigen":
            continue
        n += 1
        attempted = bool(t.calls) or t.failure in ("bad_json", "bad_format")
        made += attempted
        if t.calls and t.failure not in CALL_FAILURES:
            executable += 1
        if t.failure:
            reasons[t.failure] += 1
    out: dict[str, int | float] = {
        "traces": n,
        "made a call": made,
        "executable": executable,
        "executable share": round(executable / made, 4) if made else 0.0,
        "sft rows": sft,
        "preference rows": pairs,
    }
    out.update({f"failed: {k}": v for k, v in sorted(reasons.items())})
    return out
