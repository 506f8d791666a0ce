"""The openai engine under faults a real server or proxy produces, over loopback HTTP: answers without
content, non-JSON bodies, trickled bodies, and several threads sharing one concurrency window."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

import pytest

from synth.engines.base import Completion, EngineError, Request, SamplingParams
from synth.engines.openai import OpenAIEngine

try:  # works whether or not tests/ is a package
    from tests.openai_server import Fault, OpenAIServer, expected_text
except ImportError:  # pragma: no cover
    from openai_server import Fault, OpenAIServer, expected_text


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


def fast_engine(srv: OpenAIServer, **kw) -> OpenAIEngine:
    kw = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5, **kw}
    return OpenAIEngine("fake", srv.base_url, api_key="", **kw)


def prompts(k: int, prefix: str = "p") -> list[Request]:
    return [Request.chat(f"{prefix}{i}", id=f"row-{prefix}{i}") for i in range(k)]


# -- malformed 200 answers ------------------------------------------------------------------------
def test_answers_without_content_or_json_are_retried_never_returned():
    plan = [Fault.no_content(), Fault.no_content(null=True), Fault.garbage(), Fault.short(0)]
    with OpenAIServer(schedule={"p1": plan}) as srv:
        results = fast_engine(srv).generate(prompts(3), SamplingParams(n=2, seed=5))
        # no content, content null, not JSON, no choices: four malformed 200s, then the real answer
        assert [h.outcome for h in srv.hits_for("p1")] == ["no_content", "no_content", "garbage", "ok", "ok"]
    for i, comps in enumerate(results):
        assert [c.text for c in comps] == [expected_text(f"p{i}", 5, j) for j in range(2)]


def test_content_as_a_list_of_parts_is_read_as_text():
    with OpenAIServer(schedule={"p0": [Fault.as_parts()]}) as srv:
        (comps,) = fast_engine(srv).generate(prompts(1), SamplingParams(seed=1))
        assert srv.count("p0") == 1
    assert comps[0].text == expected_text("p0", 1, 0)


def test_an_answer_that_never_has_content_fails_loudly():
    msg = r"request 0 \(id 'row-p0'\) failed after 3 attempts.*without content"
    with OpenAIServer(schedule={"p0": [Fault.no_content()] * 5}) as srv:
        eng = fast_engine(srv, max_retries=2)
        with pytest.raises(EngineError, match=msg):
            eng.generate(prompts(1), SamplingParams())
        assert srv.count("p0") == 3


class JudgeLikeEngine:
    """Served over HTTP: answers prompts, and grades like a judge (a score from the answer's hash)."""

    name, model = "judge-like", "judge-like"

    def generate(self, requests, sampling):
        out = []
        for r in requests:
            msgs = list(r.messages)
            if "grader" in msgs[0]["content"]:
                answer = msgs[-1]["content"]
                score = int(hashlib.sha256(answer.encode()).hexdigest(), 16) % 10 + 1
                texts = [f"Score: {score}\nRationale: fine."] * sampling.n
            else:
                texts = [
                    f"Answer {j} (seed {sampling.seed}): {msgs[-1]['content']}" for j in range(sampling.n)
                ]
            out.append([Completion(t, 5, len(t.split()), "stop") for t in texts])
        return out


def run_general(tmp_path, name: str, srv: OpenAIServer):
    from synth.recipe import run_recipe
    from synth.recipes.general import GeneralConfig

    seeds = tmp_path / "seeds.jsonl"
    if not seeds.exists():
        qs = [f"Question number {i}: what is {i} + {i}?" for i in range(8)]
        seeds.write_text("".join(json.dumps({"id": f"s{i}", "prompt": q}) + "\n" for i, q in enumerate(qs)))
    cfg = GeneralConfig(
        seeds=str(seeds),
        out=str(tmp_path / name),
        engine="openai",
        model="fake",
        base_url=srv.base_url,
        k=3,
        top_fraction=0.5,
        engine_kwargs={"backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retries": 8},
    )
    run = run_recipe("general", cfg)
    try:
        rows = run.store.db.execute(
            "SELECT stage, key, kept, data FROM records ORDER BY stage, key"
        ).fetchall()
    finally:
        run.close()
    return rows


def test_a_server_dropping_content_on_a_fifth_of_answers_gives_the_rows_of_a_fault_free_run(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("SYNTH_NO_PROGRESS", "1")
    with OpenAIServer(engine=JudgeLikeEngine()) as clean:
        reference = run_general(tmp_path, "clean", clean)
    faults = [(0.1, Fault.no_content()), (0.1, Fault.no_content(null=True))]
    with OpenAIServer(
        engine=JudgeLikeEngine(), random_faults=faults, fault_seed=3, max_faults_per_prompt=4
    ) as bad:
        faulty = run_general(tmp_path, "faulty", bad)
        assert sum(h.outcome == "no_content" for h in bad.hits) >= 5  # the faults really happened
    assert {"generate", "judge", "preference_pairs"} <= {stage for stage, *_ in reference}
    kept_pairs = [r for r in reference if r[0] == "preference_pairs" and r[2]]
    assert kept_pairs, "the reference run makes preference rows"
    assert faulty == reference


# -- deadlines ----------------------------------------------------------------------------------------
def test_a_trickling_server_is_cut_at_the_deadline_and_the_retry_names_the_prompt(caplog):
    # headers at once, then one byte every 0.25 s: ~60 s for the whole answer, no single read slow
    with OpenAIServer(schedule={"p0": [Fault.trickle(0.25)]}) as srv:
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="synth.engines.openai"):
            (comps,) = fast_engine(srv, timeout_s=1.0).generate(prompts(1), SamplingParams(seed=2))
        elapsed = time.monotonic() - t0
        first, second = srv.hits_for("p0")  # the first still trickling (the client left at 1 s)
        # the server records a hit's outcome after it has sent the answer: the client can be back first
        deadline = time.monotonic() + 5.0
        while second.outcome == "?" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.outcome == "ok" and second.t - first.t < 1.5
    assert comps[0].text == expected_text("p0", 2, 0)
    assert elapsed < 4.0  # cut at the 1 s deadline, not after the whole trickle
    assert "request 0 (id 'row-p0') attempt 1/" in caplog.text and "within 1s" in caplog.text


def test_request_timeout_is_a_recipe_option_passed_to_the_openai_engine(tmp_path):
    from synth.recipe import RecipeConfig, open_run
    from synth.recipes.general import GeneralConfig

    assert RecipeConfig.__dataclass_fields__["request_timeout"].default == 600.0
    with pytest.raises(ValueError):
        GeneralConfig(out="x", request_timeout=0)
    cfg = GeneralConfig(
        out=str(tmp_path / "run"),
        engine="openai",
        model="m",
        base_url="http://127.0.0.1:9/v1",
        request_timeout=2.5,
    )
    run = open_run(cfg, "general")
    try:
        assert run.engine.inner.timeout_s == 2.5
    finally:
        run.close()


# -- one concurrency window shared by concurrent calls -------------------------------------------
def two_threads(srv: OpenAIServer, eng: OpenAIEngine, per_thread: int) -> float:
    """Threads "a" and "b" call ``generate`` at once with ``per_thread`` prompts each: the seconds
    both took (checked: every prompt got its own answer)."""
    sampling = SamplingParams(seed=4)
    results: dict[str, list] = {}

    def call(prefix: str) -> None:
        results[prefix] = eng.generate(prompts(per_thread, prefix), sampling)

    threads = [threading.Thread(target=call, args=(p,)) for p in ("a", "b")]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    for prefix in ("a", "b"):
        assert [r[0].text for r in results[prefix]] == [
            expected_text(f"{prefix}{i}", 4, 0) for i in range(per_thread)
        ]
    return elapsed


def test_two_threads_share_one_window_and_finish_in_the_time_of_one_window():
    latency, window = 0.25, 4
    # 8 + 8 requests, one window of 4: the server never sees more than 4 at once, and 4 rounds
    # (a window per call would put 8 in flight)
    with OpenAIServer(delay_s=latency) as srv:
        eng = fast_engine(srv, max_concurrency=window)
        assert eng.concurrent_calls is True
        eng.generate(prompts(1, "warm"), SamplingParams())  # connect once outside the timing
        elapsed = two_threads(srv, eng, 8)
        assert srv.max_in_flight == window  # the window was full, and never more than full
    assert elapsed < 4.9 * latency
    # 2 + 2 requests fit the window of 4 together: one round, not one call after the other
    with OpenAIServer(delay_s=latency) as srv:
        eng = fast_engine(srv, max_concurrency=window)
        eng.generate(prompts(1, "warm"), SamplingParams())
        elapsed = two_threads(srv, eng, 2)
        assert srv.max_in_flight == window
    assert elapsed < 1.9 * latency
