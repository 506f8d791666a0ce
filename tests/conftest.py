"""Shared fixtures: one real embedded-model engine per test session, and a scripted engine for fast
control-flow tests (never the only test of a feature)."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# exports are memory-mapped through an Arrow cache: keep the suite's out of the user's cache
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="synth-test-hf-"))


@pytest.fixture(scope="session")
def hf_engine():
    from synth.engines.hf import HFEngine

    return HFEngine(batch_size=8)


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
