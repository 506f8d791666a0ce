"""Reading a model's turn: a tool call (in the fallback format of ``synth.chat``) or a final answer.

A turn that holds ``<tool_call>`` is a call: the JSON after the tag (up to ``</tool_call>``, or the
end: generation stops at the closing tag, which the engine cuts off) must parse ('bad_json') and be an
object with a string ``name`` and an object of ``arguments`` ('bad_format'; ``parameters`` is read as
``arguments``, and arguments given as JSON text are parsed, as OpenAI sends them). The text before the
tag is the turn's reasoning (ReAct's thought). A turn without the tag whose text is just such a JSON
object, bare or in a ```json fence, naming a known tool, is read as a call too (``Turn.format``
"bare_json": small models drop the tags); the row stores the call, and training renders it with tags.
Anything else is a final answer; an empty turn is 'empty_reply'.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from synth.chat import TOOL_CALL, TOOL_RESPONSE

STOP = (TOOL_CALL[1], TOOL_RESPONSE[0])  # generation stops after a call, before a made-up result
_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


class CallError(ValueError):
    """A turn that tried to call a tool and failed at the format: ``reason`` for the funnel."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Call:
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass
class Turn:
    thought: str  # the text before the call (or the whole answer)
    calls: list[Call] = field(default_factory=list)
    format: str = "tags"  # "tags" | "bare_json" | "answer"

    @property
    def answer(self) -> str | None:
        return None if self.calls else self.thought


def _call_from(obj: Any) -> Call:
    if not isinstance(obj, dict):
        raise CallError("bad_format", f"a call must be a JSON object, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CallError("bad_format", 'a call needs a "name" string')
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):  # OpenAI's shape: arguments as JSON text
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise CallError("bad_json", f"the arguments of {name!r} are not valid JSON") from None
    if not isinstance(arguments, dict):
        raise CallError("bad_format", f'"arguments" of {name!r} must be a JSON object')
    return Call(name.strip(), arguments)


def _loads(body: str) -> Any:
    body = body.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return json.loads(body)
    except ValueError:
        # one JSON value followed by stray text (a small model's habit): read the value alone
        try:
            value, _ = json.JSONDecoder().raw_decode(body)
            return value
        except ValueError as e:
            raise CallError("bad_json", f"the call is not valid JSON ({e.msg})") from None


def parse_call(text: str) -> Call:
    """One call written as JSON (bare, fenced or in <tool_call> tags); ``CallError`` otherwise."""
    text = text.strip()
    if TOOL_CALL[0] in text:
        text = text.split(TOOL_CALL[0], 1)[1].split(TOOL_CALL[1], 1)[0]
    if not text.strip():
        raise CallError("bad_format", "an empty call")
    return _call_from(_loads(text))


def parse_turn(text: str, tool_names: set[str] | frozenset[str] = frozenset()) -> Turn:
    """The call or the answer a model's turn holds; ``CallError`` for a call in a bad format."""
    text = text.strip()
    if not text:
        raise CallError("empty_reply", "the turn is empty")
    open_tag, close_tag = TOOL_CALL
    if open_tag in text:
        thought, _, rest = text.partition(open_tag)
        body = rest.split(close_tag, 1)[0]
        if not body.strip():
            raise CallError("bad_format", "an empty <tool_call>")
        return Turn(thought.strip(), [_call_from(_loads(body))], "tags")
    candidate = text
    fenced = _FENCE.match(text)
    if fenced:
        candidate = fenced.group(1).strip()
    if candidate.startswith("{") and tool_names:
        try:
            obj = json.loads(candidate)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj.get("name") in tool_names:
            return Turn("", [_call_from(obj)], "bare_json")
    return Turn(text, [], "answer")
