"""OpenAIEngine against a real HTTP server on 127.0.0.1 (tests/openai_server.py): no HTTP mocks."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from synth.engines.base import Engine, EngineError, Request, SamplingParams
from synth.engines.openai import OpenAIEngine, parse_retry_after, split_tokens

try:  # works whether or not tests/ is a package
    from tests.openai_server import Fault, OpenAIServer, expected_text
except ImportError:  # pragma: no cover
    from openai_server import Fault, OpenAIServer, expected_text


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """httpx honours *_PROXY variables: make sure nothing here leaves 127.0.0.1."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


def fast_engine(srv: OpenAIServer, **kw) -> OpenAIEngine:
    kw = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5, **kw}
    return OpenAIEngine("fake", srv.base_url, api_key="", **kw)


def prompts(k: int, prefix: str = "p") -> list[Request]:
    return [Request.chat(f"{prefix}{i}") for i in range(k)]


def assert_routed(results, reqs, sampling: SamplingParams) -> None:
    """Every request got exactly n completions, each the server's answer to *that* prompt."""
    assert len(results) == len(reqs)
    for req, comps in zip(reqs, results, strict=True):
        prompt = req.messages[-1]["content"]
        want = [expected_text(prompt, sampling.seed, i, sampling.max_tokens) for i in range(sampling.n)]
        assert [c.text for c in comps] == want


# -- happy path ---------------------------------------------------------------------------------
def test_order_preserved_50_concurrent_n3():
    sampling = SamplingParams(n=3, temperature=0.8, max_tokens=64, seed=7)
    reqs = prompts(50)
    with OpenAIServer(delay_s=0.01) as srv:
        eng = fast_engine(srv, max_concurrency=8)
        assert isinstance(eng, Engine) and eng.name == "openai" and eng.model == "fake"
        results = eng.generate(reqs, sampling)
        assert_routed(results, reqs, sampling)
        for i, comps in enumerate(results):
            assert [c.text for c in comps] == [expected_text(f"p{i}", 7, j) for j in range(3)]
            for c in comps:
                assert c.finish_reason == "stop"
                assert c.prompt_tokens == 1
                assert c.completion_tokens == len(c.text.split())
        assert all(srv.count(f"p{i}") == 1 for i in range(50))  # one HTTP call each, no more
        assert srv.total_requests == 50
        assert srv.max_in_flight > 1  # it really ran concurrently
        hit = srv.hits_for("p0")[0]
        assert (hit.n, hit.seed, hit.max_tokens) == (3, 7, 64)


def test_concurrency_bound_respected():
    with OpenAIServer(delay_s=0.05) as srv:
        eng = fast_engine(srv, max_concurrency=4)
        eng.generate(prompts(40), SamplingParams(n=1, max_tokens=8))
        assert srv.max_in_flight == 4  # reached, never exceeded
    with OpenAIServer(delay_s=0.05) as srv:
        fast_engine(srv, max_concurrency=1).generate(prompts(5), SamplingParams(n=1))
        assert srv.max_in_flight == 1


def test_length_finish_reason_and_token_split():
    sampling = SamplingParams(n=3, max_tokens=2, seed=1)
    with OpenAIServer() as srv:
        (comps,) = fast_engine(srv).generate([Request.chat("hello world")], sampling)
    assert [c.text for c in comps] == ["echo hello"] * 3
    assert [c.finish_reason for c in comps] == ["length"] * 3
    assert [c.completion_tokens for c in comps] == [2, 2, 2]  # total 6 split over 3 choices
    assert [c.prompt_tokens for c in comps] == [2, 2, 2]


def test_stop_strings_sent_and_applied_client_side():
    sampling = SamplingParams(n=2, stop=("choice=1",), seed=3)
    with OpenAIServer(ignore_stop=True) as srv:  # a server that ignores `stop`
        (comps,) = fast_engine(srv).generate([Request.chat("q")], sampling)
        assert srv.hits_for("q")[0].n == 2
    assert comps[0].text == expected_text("q", 3, 0) and comps[0].finish_reason == "stop"
    assert comps[1].text == "echo q seed=3 " and comps[1].finish_reason == "stop"


def test_generate_from_inside_a_running_event_loop():
    with OpenAIServer() as srv:
        eng = fast_engine(srv)

        async def main():
            return eng.generate(prompts(3), SamplingParams(seed=0))

        results = asyncio.run(main())
    assert [r[0].text for r in results] == [expected_text(f"p{i}", 0, 0) for i in range(3)]


def test_api_key_sent_from_env_and_never_shown(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    with OpenAIServer(api_key="sk-secret-123") as srv:
        eng = OpenAIEngine("fake", srv.base_url)
        assert eng.generate(prompts(2), SamplingParams())[1][0].text.startswith("echo p1")
        assert srv.auth_headers == ["Bearer sk-secret-123"] * 2
        assert "sk-secret" not in repr(eng)
        bad = OpenAIEngine("fake", srv.base_url, api_key="sk-wrong-456")
        with pytest.raises(EngineError) as ei:
            bad.generate(prompts(1), SamplingParams())
        assert "401" in str(ei.value) and "sk-wrong" not in str(ei.value)


# -- faults -------------------------------------------------------------------------------------
def test_429_storm_with_retry_after():
    sampling = SamplingParams(n=2, seed=0)
    reqs = prompts(30)
    storm = [Fault.rate_limited(retry_after="0.02")] * 3  # three 429s for every prompt, then ok
    with OpenAIServer(schedule={f"p{i}": storm for i in range(30)}) as srv:
        results = fast_engine(srv, max_retries=4).generate(reqs, sampling)
        assert_routed(results, reqs, sampling)
        assert all(srv.count(f"p{i}") == 4 for i in range(30))  # 3 refused + 1 served
        assert all(srv.served[f"p{i}"] == 2 for i in range(30))


def test_retry_after_is_honoured():
    # backoff would retry after ~10 ms; the server asks for 1 s, so the retry must wait ~1 s
    with OpenAIServer(schedule={"p0": [Fault.rate_limited(retry_after=1)]}) as srv:
        (comps,) = fast_engine(srv).generate(prompts(1), SamplingParams(seed=0))
        first, second = srv.hits_for("p0")
    assert (first.outcome, second.outcome) == ("429", "ok")
    assert second.t - first.t >= 0.95
    assert comps[0].text == expected_text("p0", 0, 0)


def test_random_429_and_5xx_mix():
    sampling = SamplingParams(n=3, seed=11)
    reqs = prompts(40)
    faults = [
        (0.25, Fault.rate_limited(0.01)),
        (0.15, Fault.error(500)),
        (0.15, Fault.error(503, "overloaded")),
        (0.05, Fault.dropped()),
    ]
    with OpenAIServer(random_faults=faults, fault_seed=5, max_faults_per_prompt=3) as srv:
        results = fast_engine(srv, max_retries=3).generate(reqs, sampling)
        assert_routed(results, reqs, sampling)
        outcomes = [h.outcome for h in srv.hits]
        assert {"429", "500", "503"} <= set(outcomes)  # the faults really happened
        for i in range(40):  # every prompt served exactly once: no duplicate successful calls
            assert [h.outcome for h in srv.hits_for(f"p{i}")].count("ok") == 1
            assert srv.served[f"p{i}"] == 3


def test_5xx_then_success():
    plan = [Fault.error(500), Fault.error(502), Fault.error(503)]
    with OpenAIServer(schedule={"p1": plan}) as srv:
        results = fast_engine(srv).generate(prompts(3), SamplingParams(seed=0))
        assert [r[0].text for r in results] == [expected_text(f"p{i}", 0, 0) for i in range(3)]
        assert [srv.count(f"p{i}") for i in range(3)] == [1, 4, 1]


def test_slow_answers_time_out_and_are_retried():
    slow = [Fault.slow(2.0)]
    with OpenAIServer(schedule={"p0": slow, "p2": slow * 2}) as srv:
        t0 = time.monotonic()
        results = fast_engine(srv, timeout_s=0.3).generate(prompts(4), SamplingParams(seed=0))
        elapsed = time.monotonic() - t0
        assert [r[0].text for r in results] == [expected_text(f"p{i}", 0, 0) for i in range(4)]
        assert [srv.count(f"p{i}") for i in range(4)] == [2, 1, 3, 1]
    assert elapsed < 1.8  # did not wait for the slow answers


def test_dropped_connections_are_retried():
    with OpenAIServer(schedule={"p0": [Fault.dropped()] * 2}) as srv:
        results = fast_engine(srv).generate(prompts(2), SamplingParams(n=2, seed=4))
        assert [c.text for c in results[0]] == [expected_text("p0", 4, j) for j in range(2)]
        assert srv.count("p0") == 3


def test_fewer_choices_than_n_are_topped_up():
    sampling = SamplingParams(n=3, seed=20)
    with OpenAIServer(schedule={"p0": [Fault.short(1), Fault.short(1)]}) as srv:
        results = fast_engine(srv).generate(prompts(2), sampling)
        hits = srv.hits_for("p0")
    # asked for 3, got 1; asked for the 2 missing with a new seed, got 1; then the last one
    assert [(h.n, h.seed) for h in hits] == [(3, 20), (2, 21), (1, 22)]
    assert [c.text for c in results[0]] == [expected_text("p0", s, 0) for s in (20, 21, 22)]
    assert len({c.text for c in results[0]}) == 3  # no duplicated completion
    assert [c.text for c in results[1]] == [expected_text("p1", 20, j) for j in range(3)]


def test_permanent_400_is_a_clear_error_and_not_retried():
    bad = [Fault.error(400, "messages[0].content is too long")] * 10
    with OpenAIServer(schedule={"p3": bad}) as srv:
        with pytest.raises(EngineError) as ei:
            fast_engine(srv).generate(prompts(6), SamplingParams())
        assert srv.count("p3") == 1
    msg = str(ei.value)
    assert "request 3" in msg and "400" in msg and "content is too long" in msg


def test_unknown_model_is_permanent():
    with OpenAIServer(model="served-model") as srv:
        eng = OpenAIEngine("other-model", srv.base_url, api_key="", backoff_base_s=0.01)
        with pytest.raises(EngineError, match="404.*other-model.*does not exist"):
            eng.generate(prompts(1), SamplingParams())
        assert srv.total_requests == 1


def test_exhausted_retries_name_the_request(caplog):
    with OpenAIServer(schedule={"p2": [Fault.error(503, "overloaded")] * 10}) as srv:
        with caplog.at_level(logging.WARNING), pytest.raises(EngineError) as ei:
            fast_engine(srv, max_retries=2).generate(prompts(4), SamplingParams())
        assert srv.count("p2") == 3  # 1 + max_retries, not more
    msg = str(ei.value)
    assert "request 2" in msg and "3 attempts" in msg and "503" in msg and "overloaded" in msg
    assert "retrying" in caplog.text


def test_server_down_is_an_engine_error():
    with OpenAIServer() as srv:
        url = srv.base_url
    eng = OpenAIEngine("fake", url, api_key="", max_retries=1, backoff_base_s=0.01)
    with pytest.raises(EngineError, match="request 0 failed after 2 attempts"):
        eng.generate(prompts(1), SamplingParams())


def test_empty_batch_and_bad_arguments():
    eng = OpenAIEngine("m", "http://127.0.0.1:9/v1", api_key="")
    assert eng.generate([], SamplingParams()) == []
    with pytest.raises(EngineError):
        OpenAIEngine("m", "127.0.0.1:8000")
    with pytest.raises(ValueError):
        OpenAIEngine("m", "http://127.0.0.1:8000/v1", max_concurrency=0)


def test_helpers():
    assert split_tokens(7, ["aa", "aa", "aa"]) == [3, 2, 2]
    assert split_tokens(10, ["a" * 30, "a" * 10]) == [8, 2]  # proportional to text length
    assert split_tokens(5, ["", ""]) == [3, 2]
    assert sum(split_tokens(101, ["x" * k for k in (3, 5, 7, 11)])) == 101
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("junk") is None and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert parse_retry_after("99999") == 300.0


# -- the real embedded model served over HTTP ---------------------------------------------------
@pytest.mark.slow
def test_embedded_model_served_over_http():
    hf = pytest.importorskip("synth.engines.hf", reason="synth.engines.hf is not written yet")
    local = hf.HFEngine()  # None = the embedded SmolLM2-135M-Instruct
    sampling = SamplingParams(n=1, temperature=0.0, max_tokens=8)
    reqs = [Request.chat("Name a colour."), Request.chat("What is 2 + 2?")]
    with OpenAIServer(model="smollm2", engine=local) as srv:
        results = OpenAIEngine("smollm2", srv.base_url, api_key="").generate(reqs, sampling)
        assert srv.total_requests == 2
    for req, (c,) in zip(reqs, results, strict=True):
        (direct,) = local.generate([req], sampling)[0]  # greedy: the same text as served
        assert c.text == direct.text
        assert (c.prompt_tokens, c.completion_tokens) == (
            direct.prompt_tokens,
            direct.completion_tokens,
        )
        assert 0 < c.completion_tokens <= 8 and c.finish_reason in ("stop", "length")


# -- the prompt budget ----------------------------------------------------------------------------
def test_prompt_budget_from_the_server_rejects_long_prompts_per_row(tmp_path):
    """Context from /v1/models' max_model_len, exact counts from vLLM's /tokenize, asked only for a
    prompt that the byte bounds cannot decide; the other rows of the batch are generated."""
    from synth.pipeline import CachedEngine
    from synth.records import Message, SFTRecord
    from synth.stages.generate import Respond
    from synth.store import Store

    def row(i, text):
        return SFTRecord(id=f"r{i}", messages=[Message(role="user", content=text)])

    rows = [row(0, "short one"), row(1, "word " * 3000), row(2, "x" * 2_000_000), row(3, "short two")]
    with OpenAIServer(max_model_len=2048, tokenize=True) as srv:
        eng = fast_engine(srv)
        assert eng.context_length == 2048
        stage = Respond(
            engine=CachedEngine(eng, Store(tmp_path)),
            sampling=SamplingParams(max_tokens=48),
            capability="general",
        )
        out = {r.id: r for r in stage(rows)}
        assert srv.tokenize_calls == 1  # only the 15 kB prompt needed counting
        assert srv.total_requests == 2  # neither long prompt reached the server
    assert [k for k, r in out.items() if r.kept] == ["r0-0", "r3-0"]
    assert out["r1-0"].verdicts[-1].reason == "prompt_too_long"
    assert out["r1-0"].meta["detail"] == "3,000 tokens > 2,048 - 48"
    assert out["r2-0"].meta["detail"] == "at least 7,813 tokens > 2,048 - 48"  # 2 MB / 256: never sent
    assert OpenAIEngine("m", "http://127.0.0.1:9/v1", max_context=4096).context_length == 4096
