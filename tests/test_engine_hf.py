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
    """log P(choice, whole): the choice's tokens, then a next token that does not extend it."""
    import math

    import torch

    req = Request.chat("What is the capital of France?")
    choices = [" Paris", " London", " 10", " 1"]
    got = hf_engine.choice_logprobs([req], " The capital of France is", choices)[0]
    assert got[" Paris"] > got[" London"]
    tok = hf_engine.tokenizer
    ctx = tok(hf_engine._render(req) + " The capital of France is", add_special_tokens=False)["input_ids"]
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    extends = torch.tensor([t[:1].isalnum() for t in texts])
    for c in choices:
        ids = ctx + tok(c, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = hf_engine.lm(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        direct = sum(float(logp[p - 1, ids[p]]) for p in range(len(ctx), len(ids)))
        direct += math.log1p(-float(logp[-1, : len(extends)].exp()[extends].sum()))
        assert got[c] == pytest.approx(direct, abs=0.05, rel=0.03)  # bf16: cached batch vs one row
    # " 1" whole and " 10" whole are disjoint: together no more than P(" 1" + anything)
    with torch.inference_mode():
        ids = ctx + tok(" 1", add_special_tokens=False)["input_ids"]
        logp = torch.log_softmax(hf_engine.lm(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    prefix_1 = sum(float(logp[p - 1, ids[p]]) for p in range(len(ctx), len(ids)))
    assert math.exp(got[" 1"]) + math.exp(got[" 10"]) <= math.exp(prefix_1) * 1.02


def test_prompt_budget_rejects_long_prompts_before_the_engine(hf_engine):
    """One 5 MB prompt and one just past the context are rejected, per row, before generation;
    the normal prompts in the same batch are generated."""
    import time

    from synth.records import Message, SFTRecord
    from synth.stages.generate import Respond

    assert hf_engine.context_length == 8192

    def row(i, text):
        return SFTRecord(id=f"r{i}", messages=[Message(role="user", content=text)])

    huge = "lorem ipsum dolor sit amet " * 200_000  # 5.4 MB
    rows = [row(0, "Say hello."), row(1, huge), row(2, "Name a colour.")]
    stage = Respond(
        engine=hf_engine, sampling=SamplingParams(n=1, temperature=0.0, max_tokens=8), capability="general"
    )
    t0 = time.monotonic()
    out = stage(rows)
    assert time.monotonic() - t0 < 60
    by_id = {r.id: r for r in out}
    assert [r.id for r in out if r.kept] == ["r0-0", "r2-0"]
    bad = by_id["r1-0"]
    assert not bad.kept and bad.verdicts[-1].reason == "prompt_too_long"
    assert bad.meta["detail"].startswith("at least ") and bad.meta["detail"].endswith("tokens > 8,192 - 8")
    assert bad.meta["prompt_chars"] == len(huge) and len(bad.meta["prompt"]) <= 200
    # just past the context: counted exactly
    words = "hello " * 8300
    n = hf_engine.count_prompt_tokens(Request.chat(words), 8192 - 256)
    assert n.exact and n.tokens == len(
        hf_engine.tokenizer(hf_engine._render(Request.chat(words)))["input_ids"]
    )
    assert stage.too_long([Request.chat(words)]) == {0: f"{n.tokens:,} tokens > 8,192 - 8"}
