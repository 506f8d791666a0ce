"""Chat-template tokenization with loss masks, for any model's own template (the trainers in train/
and the reward-model scorer in synth.stages.reward encode conversations here, one way).

SmolLM2's template (like many) has no ``{% generation %}`` markers, so transformers cannot return an
assistant mask. Instead we render the conversation once and find each assistant turn by rendering
its prefix: the turn starts where ``render(messages[:i], add_generation_prompt=True)`` ends (after
the "<|im_start|>assistant\\n" header) and stops where ``render(messages[:i + 1])`` ends. Tokens
are mapped to those character spans through the fast tokenizer's offsets. This works for every
prefix-stable template (ChatML, Llama 3, Mistral, ...) and fails loudly otherwise.

Two masks come out of one span:

* ``sft``: the assistant's content *and* its end-of-turn token, so the model learns to stop.
* ``dpo``: the content only. Llama 3 masks formatting tokens (headers, end-of-turn and any other
  special token) out of the DPO loss: they are identical in chosen and rejected, and pushing
  their probabilities apart destabilises training.

Tool calls. A conversation may carry OpenAI-shaped tool calls (assistant ``tool_calls``, ``tool``
turns with ``tool_call_id``) and the ``tools`` it may call (function schemas). A template that renders
``tools`` itself (Qwen, Llama 3.1, Hermes, ...) gets them as they are (arguments as objects). For one
that does not (SmolLM2's), ``tool_fallback`` rewrites the conversation into plain turns, the same way
for generation (the tools recipe asks the engine with these turns) and for training:

* the tools go into the system message (appended to the first one, or a new one): how to call them
  and one JSON function schema per line;
* an assistant turn's calls follow its text, one ``<tool_call>{"name": ..., "arguments": {...}}
  </tool_call>`` block each;
* tool results become one user turn per run of ``tool`` turns, one ``<tool_response>{"name": ...,
  "content": ...}</tool_response>`` block each (a user turn, not a ``tool`` one: templates without tool
  support often refuse other roles or require user/assistant alternation).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Message = dict[str, str]
TOOL_CALL = ("<tool_call>", "</tool_call>")
TOOL_RESPONSE = ("<tool_response>", "</tool_response>")
TOOLS_INSTRUCTIONS = (
    "You can call functions to help you answer. To call one, reply with its name and JSON arguments "
    'inside <tool_call></tool_call> tags: <tool_call>{"name": "...", "arguments": {...}}</tool_call>. '
    "Each result comes back inside <tool_response></tool_response> tags. When you have what you need, "
    "answer the user in plain text. The functions, one JSON schema per line:"
)
MaskKind = Literal["sft", "dpo"]


class TemplateError(ValueError):
    """The chat template does not render conversations prefix-stably."""


@dataclass
class Encoded:
    input_ids: list[int]
    mask: list[int]  # 1 where the token is a target of the loss

    def truncate(self, max_length: int) -> Encoded:
        return Encoded(self.input_ids[:max_length], self.mask[:max_length])


def render(tokenizer, messages: Sequence[Message], generation_prompt: bool = False, tools: Any = None) -> str:
    messages, tools = tool_messages(tokenizer, messages, tools)
    how = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt, **how
    )


# -- tool calls ---------------------------------------------------------------------------------
def _tool_list(tools: Any) -> list[dict[str, Any]]:
    """The tools of a row: a list of schemas, or their JSON text (the export's ``tools`` column)."""
    if tools is None or tools == "":
        return []
    return list(json.loads(tools) if isinstance(tools, str) else tools)


def has_tool_calls(messages: Sequence[dict[str, Any]], tools: Any = None) -> bool:
    return bool(_tool_list(tools)) or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def _arguments(arguments: Any) -> Any:
    """A call's arguments as an object (OpenAI sends JSON text; templates want the object)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def tool_call_text(name: str, arguments: Any) -> str:
    """One call as the fallback writes it: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``."""
    body = json.dumps({"name": name, "arguments": _arguments(arguments)}, ensure_ascii=False)
    return f"{TOOL_CALL[0]}{body}{TOOL_CALL[1]}"


def tools_text(tools: Any) -> str:
    """The system-message block that lists the tools (one JSON schema per line)."""
    lines = [json.dumps(t, ensure_ascii=False) for t in _tool_list(tools)]
    return "\n".join([TOOLS_INSTRUCTIONS, *lines])


def tool_fallback(messages: Sequence[dict[str, Any]], tools: Any = None) -> list[Message]:
    """The conversation in plain ``{role, content}`` turns, for templates without tool support (see
    the module's docstring); a conversation without tools or calls comes back as plain turns."""
    listed = _tool_list(tools)
    out: list[Message] = []
    if listed:
        block = tools_text(listed)
        if messages and messages[0].get("role") == "system":
            first, *rest = messages
            out.append({"role": "system", "content": f"{first['content']}\n\n{block}"})
            messages = rest
        else:
            out.append({"role": "system", "content": block})
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            body = json.dumps({"name": m.get("name"), "content": content}, ensure_ascii=False)
            text = f"{TOOL_RESPONSE[0]}{body}{TOOL_RESPONSE[1]}"
            if out and out[-1]["role"] == "user" and out[-1]["content"].startswith(TOOL_RESPONSE[0]):
                out[-1] = {"role": "user", "content": out[-1]["content"] + "\n" + text}
            else:
                out.append({"role": "user", "content": text})
            continue
        calls = [
            tool_call_text(c["function"]["name"], c["function"]["arguments"])
            for c in m.get("tool_calls") or []
        ]
        text = "\n".join(part for part in [content.strip() if calls else content, *calls] if part)
        out.append({"role": role, "content": text})
    return out


_TOOL_SUPPORT: dict[int, bool] = {}
_PROBE = {"type": "function", "function": {"name": "synth_probe_tool", "description": "probe",
          "parameters": {"type": "object", "properties": {}}}}  # fmt: skip


def supports_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` list itself (checked once: a probe
    tool's name must appear in the rendered text)."""
    key = id(tokenizer)
    if key not in _TOOL_SUPPORT:
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}], tools=[_PROBE], tokenize=False
            )
            _TOOL_SUPPORT[key] = "synth_probe_tool" in text
        except Exception:  # a template that refuses tools has no tool support
            _TOOL_SUPPORT[key] = False
    return _TOOL_SUPPORT[key]


def tool_messages(tokenizer, messages: Sequence[dict[str, Any]], tools: Any = None) -> tuple[list, Any]:
    """(messages, tools) as ``apply_chat_template`` takes them: unchanged without tool content; with
    it, native (unset fields dropped, arguments as objects) where the template supports tools, else
    the plain-turn fallback and no tools."""
    if not has_tool_calls(messages, tools):
        return list(messages), None
    if not supports_tools(tokenizer):
        return tool_fallback(messages, tools), None
    native = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": _arguments(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ]
        native.append(m)
    return native, _tool_list(tools) or None


def special_ids(tokenizer) -> set[int]:
    """Every special token id: eos/pad/bos plus added special tokens such as chat headers."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in tokenizer.added_tokens_decoder.items() if t.special)
    return ids


def assistant_spans(
    tokenizer, messages: Sequence[Message], tools: Any = None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn's body.

    A span runs from the end of the turn's header to the end of its end-of-turn marker (trailing
    whitespace such as ChatML's newline is left out: it is template glue, not the answer). Tool
    calls are rendered natively or by the fallback first (``tool_messages``).
    """
    messages, tools = tool_messages(tokenizer, messages, tools)
    text = render(tokenizer, messages, tools=tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True, tools=tools)
        through = render(tokenizer, messages[: i + 1], tools=tools).rstrip()
        if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
            raise TemplateError(
                "the chat template is not prefix-stable (rendering the first turns alone does not "
                f"give a prefix of the whole conversation) at message {i}; pass a model whose "
                "template is, or a training template via tokenizer.chat_template"
            )
        spans.append((len(before), len(through)))
    return text, spans


def encode(tokenizer, messages: Sequence[Message], kind: MaskKind = "sft", tools: Any = None) -> Encoded:
    """Token ids of the rendered conversation and the mask of assistant tokens in the loss
    (``tools``: the row's tool schemas, a list or its JSON text, when it has tool calls)."""
    return _encode(tokenizer, messages, kind, tools)[0]


def _encode(tokenizer, messages, kind, tools=None) -> tuple[Encoded, list[int]]:
    text, spans = assistant_spans(tokenizer, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    specials = special_ids(tokenizer) if kind == "dpo" else set()
    mask = []
    for tid, (start, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = any(s <= start < e for s, e in spans)
        mask.append(int(inside and tid not in specials))
    starts = [start for start, _ in enc["offset_mapping"]]
    return Encoded(list(enc["input_ids"]), mask), starts


def encode_prompt_responses(
    tokenizer, prompt: Sequence[Message], responses: Sequence[Message], kind: MaskKind
) -> tuple[list[int], list[Encoded]]:
    """Shared prompt ids plus each response's continuation, for one-row multi-response encoding.

    Each ``prompt + [response]`` is encoded separately and split where the prompt (with the
    assistant header) ends, so ``prompt_ids + part.input_ids`` is exactly that encoding. Should a
    tokenizer merge across the boundary differently per response, the first response's prompt ids
    are used for all (a one-token approximation).
    """
    cut = len(render(tokenizer, prompt, generation_prompt=True))
    prompt_ids: list[int] | None = None
    parts = []
    for response in responses:
        full, starts = _encode(tokenizer, [*prompt, response], kind)
        k = sum(1 for start in starts if start < cut)
        if prompt_ids is None:
            prompt_ids = full.input_ids[:k]
        parts.append(Encoded(full.input_ids[k:], full.mask[k:]))
    return prompt_ids or [], parts
