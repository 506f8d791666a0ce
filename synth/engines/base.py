"""The one small batch interface every engine (hf, vllm, openai) implements."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
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


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or stop string) | "length"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
