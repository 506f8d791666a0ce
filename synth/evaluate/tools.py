"""Tool use: whether a model calls the right tool with the right arguments, decided by executing the call.

Llama 3 evaluates tool use on Nexus, API-Bank, API-Bench and BFCL (section 5.2.6), benchmarks that check
the call a model writes. Here the model gets the tools recipe's core tools (``python`` in the sandbox,
``calculator`` with SymPy, ``search`` over a held-out corpus: ``synth.stages.tools.registry``), listed
as the recipe lists them (``synth.chat.tool_fallback``, with the recipe's few-shot ReAct prompt
``tools/act``), and a held-out question (``pipelines/data/heldout/tools.jsonl``:
``{"id", "question", "answer", "match"?, "call"?}``). Its first turn is read as the recipe reads it
(``synth.stages.tools.calls.parse_turn``: ``<tool_call>`` tags or a bare JSON call), checked against the
tool's schema and executed (``Toolbox.execute``). The call is correct when

- its executed result gives the expected ``answer``: ``match: equals`` (the default) wants the result,
  one of its ``=`` / ``or`` / ``,`` parts, or its last line to equal the answer (numbers compared as
  numbers, to the answer's decimal places); ``match: contains`` wants the answer in the result, whole
  words after normalisation (a search whose best passage states it);
- or its name and arguments equal the expected ``call`` (strings compared without white space).

Reported: ``parse_rate`` (the turn holds a well-formed call), ``execution_rate`` (the call passed the
schema check and ran), ``accuracy`` (correct), and each failure's reason: the parser's ('bad_json',
'bad_format', 'empty_reply'), 'no_call' (the model answered in text), the registry's ('unknown_tool',
'schema_violation', 'execution_error', 'timeout', 'sandbox_error'), or 'wrong_result'.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from sandboxes import Limits
from synth.chat import tool_fallback
from synth.engines.base import Engine, Request
from synth.evaluate.common import Progress, greedy_replies, read_rows, share
from synth.prompts import load_prompt
from synth.stages.execute import Sandbox
from synth.stages.factuality.questions import mentions
from synth.stages.tools.calls import STOP, Call, CallError, parse_turn
from synth.stages.tools.registry import CORE_TOOLS, Toolbox, core_specs
from synth.stages.tools.search import SearchIndex, read_documents

CORPUS = Path(__file__).resolve().parents[2] / "pipelines" / "data" / "heldout" / "tools_corpus"


class ExpectedCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: StrictStr = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: StrictStr
    question: StrictStr = Field(min_length=1)
    answer: StrictStr = Field(min_length=1)
    match: Literal["equals", "contains"] = "equals"
    call: ExpectedCall | None = None


def read_questions(path: str | Path, limit: int | None = None) -> list[ToolQuestion]:
    return list(read_rows(path, ToolQuestion, limit))


def messages(question: str, toolbox: Toolbox) -> list[dict[str, str]]:
    return tool_fallback(load_prompt("tools/act").messages(query=question), toolbox.schemas())


_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def _number(text: str) -> float | None:
    text = text.strip().replace(",", "")
    return float(text) if _NUMBER.match(text) else None


def _same(candidate: str, answer: str) -> bool:
    a, c = " ".join(answer.lower().split()), " ".join(candidate.lower().split()).rstrip(".")
    if a == c:
        return True
    x, y = _number(c), _number(a)
    if x is None or y is None:
        return False
    if math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9):
        return True
    places = len(a.split(".", 1)[1]) if "." in a else 0
    return places > 0 and round(x, places) == y


def result_matches(output: str, answer: str, match: str = "equals") -> bool:
    """Whether an executed call's result gives ``answer`` (see the module)."""
    if match == "contains":
        return mentions(output, answer)
    output = output.strip()
    lines = output.splitlines()
    parts = [output, *(lines[-1:] if lines else [])]
    parts += [p for p in re.split(r"\s+=\s+|\s+or\s+|,\s+", output) if p]
    return any(_same(p, answer) for p in parts)


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return "".join(value.split()).lower()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def call_matches(call: Call, expected: ExpectedCall | None) -> bool:
    return (
        expected is not None
        and call.name == expected.name
        and _plain(call.arguments) == _plain(expected.arguments)
    )


def toolbox_for(
    tools: list[str] | tuple[str, ...] = CORE_TOOLS,
    corpus: str | Path = CORPUS,
    *,
    timeout: float = 10.0,
    backend: str = "local",
    search_k: int = 1,
) -> Toolbox:
    unknown = sorted(set(tools) - set(CORE_TOOLS))
    if unknown:
        raise ValueError(f"unknown tools {unknown}; the core tools are {', '.join(CORE_TOOLS)}")
    sandbox = Sandbox(backend=backend, limits=Limits(timeout_s=timeout, memory_mb=512))
    if "python" in tools:
        sandbox.check()
    index = SearchIndex(read_documents(corpus)) if "search" in tools else None
    return Toolbox(core_specs(tools), sandbox, index=index, search_k=search_k)


def evaluate_tools(
    engine: Engine,
    rows: list[ToolQuestion],
    *,
    tools: list[str] | tuple[str, ...] = CORE_TOOLS,
    corpus: str | Path = CORPUS,
    max_tokens: int = 128,
    batch_size: int = 16,
    timeout: float = 10.0,
    backend: str = "local",
    search_k: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Parse rate, execution rate and accuracy of the model's first tool call on ``rows``."""
    if not rows:
        raise ValueError("no tool questions to evaluate")
    toolbox = toolbox_for(tools, corpus, timeout=timeout, backend=backend, search_k=search_k)
    try:
        requests = [Request.chat(messages(r.question, toolbox), id=r.id) for r in rows]
        replies = greedy_replies(
            engine, requests, max_tokens=max_tokens, batch_size=batch_size, stop=STOP, progress=progress
        )
        results = [_judge(row, reply.text, toolbox) for row, reply in zip(rows, replies, strict=True)]
    finally:
        toolbox.close()
    n = len(rows)
    return {
        "accuracy": share(sum(r["correct"] for r in results), n),
        "parse_rate": share(sum(r["parsed"] for r in results), n),
        "execution_rate": share(sum(r["executed"] for r in results), n),
        "n": n,
        "reasons": dict(Counter(r["reason"] for r in results if r["reason"])),
        "results": results,
    }


def _judge(row: ToolQuestion, reply: str, toolbox: Toolbox) -> dict[str, Any]:
    out: dict[str, Any] = {"id": row.id, "reply": reply, "parsed": False, "executed": False,
                           "correct": False, "call": None, "output": None, "reason": None}  # fmt: skip
    try:
        turn = parse_turn(reply, toolbox.names)
    except CallError as e:
        return {**out, "reason": e.reason}
    if not turn.calls:
        return {**out, "reason": "no_call"}
    call = turn.calls[0]
    (execution,) = toolbox.execute([(call, [])])
    by_call = call_matches(call, row.call)
    by_result = execution.ok and result_matches(execution.output, row.answer, row.match)
    correct = by_call or by_result
    reason = execution.reason or (None if correct else "wrong_result")
    return {**out, "parsed": True, "executed": execution.ok, "correct": correct,
            "matched_by": "result" if by_result else "call" if by_call else None,
            "call": {"name": call.name, "arguments": call.arguments, "format": turn.format},
            "output": execution.output, "reason": None if correct else reason}  # fmt: skip
