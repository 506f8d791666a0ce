"""The one small batch interface every engine (hf, vllm, openai) implements.

``Engine.generate`` is all a stage needs. Engines may also offer, and callers look for with
``getattr``:

* ``choice_logprobs(requests, prefix, choices) -> list[dict[str, float] | None]``: log P(each choice,
  *whole*, right after the assistant ``prefix``), the distribution a judge's score is read from
  (``synth.engines.choices``); None for a request whose distribution the engine could not read (the
  caller then falls back to the written answer).
* ``context_length: int | None``: tokens the model attends to, prompt plus generation.
* ``count_prompt_tokens(request, limit) -> TokenCount | None``: the prompt's size in tokens, exact or
  a bound that decides it against ``limit`` (None: the engine cannot tell).
* ``concurrent_calls: bool``: True when ``generate`` may be called from several threads at once
  (the calls then share the engine's one concurrency window); False or absent: one call at a time.

Every engine honours ``SamplingParams.json_schema`` / ``regex`` (structured output; how each does it,
and what an invalid reply looks like, is in ``synth.engines.structured``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``json_schema`` / ``regex``: a constraint every reply must satisfy (structured
    output, ``synth.engines.structured``; at most one of the two)."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_schema: dict[str, Any] | None = field(default=None, hash=False)
    regex: str | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.json_schema is not None and self.regex is not None:
            raise ValueError("json_schema and regex: give one constraint, not both")
        if self.json_schema is not None:
            if not isinstance(self.json_schema, dict):
                raise ValueError("json_schema must be a JSON schema (a dict)")
            from synth.engines.structured import check_schema

            check_schema(self.json_schema)
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"regex does not compile: {e}") from None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        for k in ("json_schema", "regex"):  # absent unless set: engine-cache keys stay as they were
            if d[k] is None:
                del d[k]
        return d


@dataclass(frozen=True)
class Request:
    """One chat prompt. ``messages`` are plain ``{"role", "content"}`` dicts."""

    messages: tuple[dict[str, str], ...]
    id: str = ""

    @classmethod
    def chat(cls, messages: list[dict[str, str]] | str, id: str = "") -> Request:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return cls(messages=tuple(dict(m) for m in messages), id=id)

    def key(self) -> str:
        return json.dumps(list(self.messages), sort_keys=True, ensure_ascii=False)

    @property
    def continues(self) -> bool:
        """The last message is an assistant turn to continue (a prefix the reply extends: a solution
        rolled out from one of its steps, reasoning resumed after a code block's output), not a
        finished turn to answer."""
        return bool(self.messages) and self.messages[-1].get("role") == "assistant"


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or stop string) | "length"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # by hand, not asdict(): one per cached completion, millions at scale (asdict walks the fields
        # recursively, 20x slower); ``extra`` is copied as asdict would
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "extra": copy.deepcopy(self.extra) if self.extra else {},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        return cls(**d)


@runtime_checkable
class Engine(Protocol):
    """``generate`` returns, for each request in order, exactly ``sampling.n`` completions."""

    name: str
    model: str

    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]: ...


class EngineError(RuntimeError):
    """An engine cannot run here (missing package, no GPU, unreachable server)."""


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; return (text, hit)."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@dataclass(frozen=True)
class TokenCount:
    """A prompt's size in tokens: exact, or (``exact=False``) a bound that already decides it: a
    lower bound above the limit it was counted against, or an upper bound within it."""

    tokens: int
    exact: bool = True


PREFIX_CHARS_PER_TOKEN = 8  # a prompt longer than this many characters per allowed token is first
PREFIX_MARGIN = 16  # counted on a prefix; its count less this margin bounds the whole one from below


def max_token_bytes(tokenizer: Any) -> int:
    """An upper bound on the UTF-8 bytes one token stands for: the longest vocabulary entry (a
    byte-level or sentencepiece entry is never shorter in UTF-8 than the text it decodes to)."""
    return max((len(str(t).encode("utf-8")) for t in tokenizer.get_vocab()), default=1) or 1


def count_tokens(text: str, limit: int, max_bytes: int, count: Any) -> TokenCount:
    """``count(text)`` (a tokenizer's count), without tokenizing a text whose size already proves it
    longer than ``limit``: first ``bytes / max_bytes`` (no token stands for more), then the count of
    a prefix (less a margin for the word the cut splits)."""
    nbytes = len(text.encode("utf-8", "surrogatepass"))
    lower = math.ceil(nbytes / max(1, max_bytes))
    if lower > limit:
        return TokenCount(lower, exact=False)
    head_chars = PREFIX_CHARS_PER_TOKEN * (limit + 1)
    if len(text) > head_chars:
        head = count(text[:head_chars]) - PREFIX_MARGIN
        if head > limit:
            return TokenCount(head, exact=False)
    return TokenCount(count(text))
