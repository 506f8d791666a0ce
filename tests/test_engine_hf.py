"""The transformers engine on the real embedded model."""

import pytest

from synth.engines import get_engine
from synth.engines.base import Request, SamplingParams
from synth.engines.embedded import embedded_model_path
from synth.engines.hf import HFEngine

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the sum of a list. Reply with code only.",
    "Say hello.",
]


def test_embedded_model_is_cached_safetensors():
    path = embedded_model_path()
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    assert "<|im_start|>" in (path / "chat_template.jinja").read_text()


def test_n_samples_token_counts_and_finish_reasons(hf_engine):
    reqs = [Request.chat(p) for p in PROMPTS]
    out = hf_engine.generate(reqs, SamplingParams(n=3, temperature=0.9, max_tokens=12, seed=3))
    assert len(out) == 3 and all(len(c) == 3 for c in out)
    for comps in out:
        assert all(c.prompt_tokens == comps[0].prompt_tokens > 10 for c in comps)
        for c in comps:
            assert 0 < c.completion_tokens <= 12
            assert c.finish_reason == ("length" if c.completion_tokens == 12 else "stop")
    # longer prompt -> more prompt tokens: counts are per request, not per padded batch
    assert out[1][0].prompt_tokens > out[2][0].prompt_tokens


def test_sampling_is_seeded_and_diverse(hf_engine):
    reqs = [Request.chat(PROMPTS[2])]
    s = SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=7)
    a = hf_engine.generate(reqs, s)
    assert [c.text for c in a[0]] == [c.text for c in hf_engine.generate(reqs, s)[0]]
    assert len({c.text for c in a[0]}) > 1
    other = hf_engine.generate(reqs, SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=8))
    assert [c.text for c in a[0]] != [c.text for c in other[0]]


def test_batched_greedy_matches_one_at_a_time():
    # fp32: left padding must not change what a prompt decodes to (in bf16, padded batches round
    # differently and a near-tie token may flip)
    engine = HFEngine(dtype="float32")
    s = SamplingParams(n=1, temperature=0.0, max_tokens=20)
    batched = engine.generate([Request.chat(p) for p in PROMPTS], s)
    single = [engine.generate([Request.chat(p)], s)[0] for p in PROMPTS]
    assert [b[0].text for b in batched] == [o[0].text for o in single]


def test_stop_strings_cut_and_report_stop(hf_engine):
    s = SamplingParams(n=1, temperature=0.0, max_tokens=40, stop=("Paris",))
    c = hf_engine.generate([Request.chat(PROMPTS[0])], s)[0][0]
    assert "Paris" not in c.text and c.finish_reason == "stop"


def test_get_engine_names():
    with pytest.raises(Exception, match="unknown engine"):
        get_engine("nope")
    assert isinstance(get_engine("hf", batch_size=2), HFEngine)


def test_choice_logprobs_match_a_direct_forward_pass(hf_engine):
    import torch

    req = Request.chat("What is the capital of France?")
    choices = [" Paris", " London", " 10", " 1"]
    got = hf_engine.choice_logprobs([req], " The capital of France is", choices)[0]
    assert got[" Paris"] > got[" London"]
    tok = hf_engine.tokenizer
    ctx = tok(hf_engine._render(req) + " The capital of France is", add_special_tokens=False)["input_ids"]
    for c in choices:
        ids = ctx + tok(c, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = hf_engine.lm(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        direct = sum(float(logp[p - 1, ids[p]]) for p in range(len(ctx), len(ids)))
        assert got[c] == pytest.approx(direct, abs=0.05)  # bf16: padded batch vs single row
