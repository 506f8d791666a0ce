"""Engines behind one batch interface: ``generate(requests, sampling) -> completions``."""

from __future__ import annotations

from synth.engines.base import Completion, Engine, EngineError, Request, SamplingParams

ENGINES = ("hf", "vllm", "openai")


def get_engine(
    name: str = "hf",
    model: str | None = None,
    *,
    base_url: str | None = None,
    request_timeout: float | None = None,
    **kwargs,
) -> Engine:
    """Build an engine by name; heavy imports happen only for the engine asked for.

    ``request_timeout``: the openai engine's total deadline per request attempt (``timeout_s``; an
    explicit ``timeout_s`` in ``kwargs`` wins); the local engines have no requests to time out."""
    if name == "hf":
        from synth.engines.hf import HFEngine

        return HFEngine(model, **kwargs)
    if name == "vllm":
        from synth.engines.embedded import resolve_model
        from synth.engines.vllm import VLLMEngine

        return VLLMEngine(resolve_model(model), **kwargs)
    if name == "openai":
        from synth.engines.openai import OpenAIEngine

        if not base_url:
            raise EngineError("the openai engine needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        if not model:
            raise EngineError("the openai engine needs --model: the name the server serves")
        if request_timeout is not None:
            kwargs.setdefault("timeout_s", request_timeout)
        return OpenAIEngine(model=model, base_url=base_url, **kwargs)
    raise EngineError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


__all__ = ["Completion", "Engine", "EngineError", "Request", "SamplingParams", "get_engine"]
