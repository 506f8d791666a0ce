"""VLLMEngine: clear errors where it cannot run; output mapping; a real run on vllm + CUDA."""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from dataclasses import dataclass, field

import pytest

from synth.engines.base import Engine, EngineError, Request, SamplingParams
from synth.engines.vllm import VLLMEngine


def test_missing_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(EngineError, match=r"pip install 'synth-llm\[gpu\]'"):
        VLLMEngine("org/some-model")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_on_this_machine_via_factory():
    from synth.engines import get_engine

    with pytest.raises(EngineError, match=r"vllm.*not installed.*synth-llm\[gpu\]"):
        get_engine("vllm", "org/some-model")


# -- a stand-in for the vllm package (vllm itself is absent here): tests the mapping logic -------
@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None  # vllm: top-k log-probs per generated token


@dataclass
class FakeCompletionOutput:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[dict[int, FakeLogprob]] | None = None  # vllm: one {token id: Logprob} per token


@dataclass
class FakeLogprob:  # vllm.sequence.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FakeRequestOutput:
    prompt_token_ids: list[int]
    outputs: list[FakeCompletionOutput] = field(default_factory=list)


class FakeTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize and add_generation_prompt
        return [1] + [len(m["content"]) for m in messages] + [2]

    def encode(self, text, add_special_tokens=True):
        return list(range(len(text.split())))


class FakeLLM:
    instances: list[FakeLLM] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[tuple[list, FakeSamplingParams]] = []
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return FakeTokenizer()

    def generate(self, prompts, params, use_tqdm=True):
        assert use_tqdm is False
        self.calls.append((prompts, params))
        outs = []
        for p in prompts:
            ids = p["prompt_token_ids"]
            samples = []
            for j in range(params.n):
                if ids[1] == 3:  # the prompt "abc": runs into max_tokens
                    samples.append(FakeCompletionOutput("a b c d", [5] * params.max_tokens, "length"))
                else:  # ends in a stop string that vllm "forgot" to cut
                    samples.append(FakeCompletionOutput(f"s{j} x STOP tail", [7, 8, 9, 10], "stop"))
            outs.append(FakeRequestOutput(prompt_token_ids=ids, outputs=samples))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    import torch

    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    FakeLLM.instances.clear()
    return mod


def test_no_cuda_gpu_is_a_clear_error(fake_vllm, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineError, match="needs a CUDA GPU"):
        VLLMEngine("org/some-model")
    assert FakeLLM.instances == []  # failed before loading anything


def test_output_mapping(fake_vllm):
    eng = VLLMEngine("org/m", dtype="bfloat16", max_model_len=2048, seed=3)
    assert isinstance(eng, Engine) and eng.name == "vllm" and eng.model == "org/m"
    (llm,) = FakeLLM.instances
    assert llm.kwargs == {
        "model": "org/m",
        "dtype": "bfloat16",
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "max_model_len": 2048,
        "seed": 3,
    }
    sampling = SamplingParams(n=2, temperature=0.5, top_p=0.9, max_tokens=6, stop=("STOP",), seed=9)
    reqs = [Request.chat("abc"), Request.chat("hello")]
    res = eng.generate(reqs, sampling)
    prompts, params = llm.calls[0]
    assert prompts == [{"prompt_token_ids": [1, 3, 2]}, {"prompt_token_ids": [1, 5, 2]}]
    assert params == FakeSamplingParams(2, 0.5, 0.9, 6, ["STOP"], 9)
    assert [len(r) for r in res] == [2, 2]
    a, b = res
    assert [(c.text, c.finish_reason, c.completion_tokens, c.prompt_tokens) for c in a] == [
        ("a b c d", "length", 6, 3)
    ] * 2
    assert [(c.text, c.finish_reason, c.completion_tokens) for c in b] == [
        ("s0 x ", "stop", 2),  # cut client-side; tokens re-counted on the cut text
        ("s1 x ", "stop", 2),
    ]
    assert eng.generate([], sampling) == []


def test_greedy_n_asks_once_and_repeats(fake_vllm):
    eng = VLLMEngine("org/m")
    res = eng.generate([Request.chat("hello")], SamplingParams(n=3, temperature=0.0))
    assert FakeLLM.instances[0].calls[0][1].n == 1
    assert [c.text for c in res[0]] == ["s0 x STOP tail"] * 3
    assert res[0][0] is not res[0][1]


# -- judge scores: whole choices from top log-probs ------------------------------------------------
class CharTokenizer:
    """One token per character (token id = code point): " 10" is " " + "1" + "0", as on SmolLM2."""

    chat_template = "chars"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        return [ord(c) for c in text] if tokenize else text

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))

    def get_vocab(self):
        return {chr(i): i for i in range(32, 127)}


def judge_next(prompt: str) -> dict[str, float]:
    """A judge that, after "Score:", writes " 10" when the question says "great", else " 9"."""
    target = " 10" if "great" in prompt else " 9"
    written = prompt[prompt.rindex("Score:") + len("Score:") :]
    if written == "":
        return {" ": 0.97, "\n": 0.03}
    if written == " ":
        return {target[1]: 0.9, "7": 0.06, "2": 0.04}
    if target.startswith(written) and written != target:
        return {target[len(written)]: 0.95, "\n": 0.05}
    return {"\n": 0.9, "0": 0.02, ".": 0.08}


class ScoringLLM(FakeLLM):
    def get_tokenizer(self):
        return CharTokenizer()

    def generate(self, prompts, params, use_tqdm=True):
        assert use_tqdm is False and params.max_tokens == 1 and params.logprobs
        self.calls.append((prompts, params))
        outs = []
        for p in prompts:
            ids = p["prompt_token_ids"]
            dist = judge_next("".join(map(chr, ids)))
            top = sorted(dist.items(), key=lambda kv: -kv[1])[: params.logprobs]
            lps = {ord(t): FakeLogprob(math.log(q), r + 1, t) for r, (t, q) in enumerate(top)}
            best = ord(top[0][0])
            outs.append(FakeRequestOutput(ids, [FakeCompletionOutput(chr(best), [best], "length", [lps])]))
        return outs


def test_choice_logprobs_from_top_logprobs(fake_vllm):
    from synth.stages.judge import SCORE_CHOICES, expected_score

    fake_vllm.LLM = ScoringLLM
    eng = VLLMEngine("org/m", max_model_len=4096)
    choices = list(SCORE_CHOICES)
    great, good = eng.choice_logprobs(
        [Request.chat("a great answer"), Request.chat("a good answer")], "Score:", choices
    )
    # whole labels: " 1" + "0" + an end is 10, never 1; " 1" + an end is 1
    assert math.exp(great[" 10"]) == pytest.approx(0.97 * 0.9 * 0.95 * (1 - 0.02))
    assert math.exp(great[" 1"]) == pytest.approx(0.97 * 0.9 * 0.05)
    assert math.exp(good[" 9"]) == pytest.approx(0.97 * 0.9 * (1 - 0.02))
    assert great[" 5"] == -math.inf  # outside the top k: improbable
    assert expected_score(great) > 9.0 > expected_score(good) > 8.4
    (llm,) = ScoringLLM.instances
    prompts, params = llm.calls[0]
    assert params.logprobs == eng.top_logprobs and params.temperature == 0.0
    # one request per prefix of every choice ("", " ", " 1".." 9", " 10"), sharing the prompt
    assert len(prompts) == 2 * 12
    ctx = [ord(c) for c in "<user>a great answer<assistant>Score:"]
    assert all(p["prompt_token_ids"][: len(ctx)] == ctx for p in prompts[:12])
    assert eng.context_length == 4096
    n = eng.count_prompt_tokens(Request.chat("hello"), 100)
    assert n.exact and n.tokens == len("<user>hello<assistant>")
    big = eng.count_prompt_tokens(Request.chat("x" * 10_000), 100)  # bound by bytes, not tokenized
    assert not big.exact and big.tokens > 100


# -- the real thing, where vllm and a CUDA GPU are present --------------------------------------
def _real_vllm_skip_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'synth-llm[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_real_vllm_skip_reason() is not None, reason=str(_real_vllm_skip_reason()))
def test_real_vllm_embedded_model():
    from synth.engines.embedded import resolve_model

    eng = VLLMEngine(resolve_model(None), gpu_memory_utilization=0.3, max_model_len=1024)
    sampling = SamplingParams(n=2, temperature=0.7, max_tokens=8, seed=0)
    res = eng.generate([Request.chat("Name a colour."), Request.chat("What is 2 + 2?")], sampling)
    assert [len(r) for r in res] == [2, 2]
    for comps in res:
        for c in comps:
            assert c.prompt_tokens > 0 and 0 < c.completion_tokens <= 8
            assert c.finish_reason in ("stop", "length")
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=8)
    assert eng.generate([Request.chat("Hi")], greedy) == eng.generate([Request.chat("Hi")], greedy)
