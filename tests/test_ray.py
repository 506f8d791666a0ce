"""Scale-out: engine replicas as Ray actors (``--ray``, ``--replicas``), and the openai engine over
several servers (``--base-url A,B``).

* Replicas of the embedded model in Ray actors answer exactly as the engine in one process
  (generations, judge distributions, token counts), and calls from several threads spread over them.
* A replica's process killed (SIGKILL) in the middle of a run: its call is sent to a live replica, a
  new replica takes its place, and the run's rows are exactly those of a run in one process.
* ``synth run --ray auto --replicas 2`` killed with ``kill -9`` and run again: the same rows and the
  same export as a run never stopped (the openai engine inside the actors, a loopback server).
* Several base URLs: requests spread over the servers, a dead one is left out at once.

The Ray tests share one local Ray instance (``ray.init(num_cpus=2)``) and one pair of replicas.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from synth.config import ConfigError, row_neutral
from synth.engines.base import Request, SamplingParams
from synth.engines.openai import OpenAIEngine
from synth.recipe import open_run, run_recipe
from synth.recipes.general import GeneralConfig
from synth.store import Store

try:  # works whether or not tests/ is a package
    from tests.openai_server import OpenAIServer, expected_text
except ImportError:  # pragma: no cover
    from openai_server import OpenAIServer, expected_text

ROOT = Path(__file__).resolve().parents[1]
NO_PROXY = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
ENV = {**NO_PROXY, "SYNTH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
SEEDS = ["What is the capital of Italy?", "Name a yellow fruit.", "What is 3 + 4?", "Say something kind."]


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """httpx honours *_PROXY variables: make sure nothing here leaves 127.0.0.1."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


def seeds_file(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"s{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    return path


def snapshot(run_dir: Path) -> dict[str, list[tuple]]:
    """Every row of every stage, as stored (kept and rejected, with their data)."""
    store = Store(run_dir, read_only=True)
    try:
        rows = store.db.execute(
            "SELECT stage, key, kept, reason, data FROM records ORDER BY stage, seq"
        ).fetchall()
    finally:
        store.close()
    out: dict[str, list[tuple]] = {}
    for stage, *row in rows:
        out.setdefault(stage, []).append(tuple(row))
    return out


def events(run_dir: Path) -> list[dict]:
    p = run_dir / "events.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.endswith("}")] if p.exists() else []


def committed_once(run_dir: Path) -> None:
    batches = [(e["stage"], e["batch"]) for e in events(run_dir) if e["event"] == "batch_committed"]
    assert batches and len(batches) == len(set(batches)), "a batch was committed twice"


# -- options and wiring (no Ray started) ---------------------------------------------------------------
def test_replicas_need_ray_and_ray_keeps_every_replica_busy(tmp_path):
    with pytest.raises(ConfigError, match="replicas: 2 engine replicas run as Ray actors: add --ray auto"):
        GeneralConfig(out=str(tmp_path / "r"), replicas=2)
    # the engine is built on the first call that misses the cache: opening the run starts nothing
    for engine, kw, overlap in [
        ("hf", {}, 6),
        ("openai", {"base_url": "http://127.0.0.1:9/v1", "model": "m"}, 16),
    ]:
        cfg = GeneralConfig(out=str(tmp_path / engine), engine=engine, ray="auto", replicas=3, **kw)
        run = open_run(cfg, "general")
        assert run.overlap == overlap  # at least 2 batches in flight per replica
        run.close()
    for kw, overlap in [
        ({"ray": "auto", "replicas": 3, "batches_in_flight": 9}, 9),
        ({"batches_in_flight": 4}, 1),
    ]:
        run = open_run(GeneralConfig(out=str(tmp_path / f"o{overlap}"), **kw), "general")
        assert run.overlap == overlap  # an hf engine in this process takes one call at a time
        run.close()
    assert {"ray", "replicas"} <= row_neutral(GeneralConfig)  # a run resumes with or without them


# -- several servers for the openai engine ---------------------------------------------------------------
def test_several_base_urls_share_the_requests_and_a_dead_one_is_left_out():
    sampling = SamplingParams(n=1, max_tokens=16, seed=3)
    reqs = [Request.chat(f"p{i}") for i in range(40)]
    with OpenAIServer(delay_s=0.02) as a, OpenAIServer(delay_s=0.02) as b:
        eng = OpenAIEngine("fake", f"{a.base_url}, {b.base_url}", api_key="", max_concurrency=4, timeout_s=5)
        assert eng.base_urls == [a.base_url, b.base_url] and eng.window == 8
        out = eng.generate(reqs, sampling)
        assert [c[0].text for c in out] == [expected_text(f"p{i}", 3, 0, 16) for i in range(40)]
        assert a.total_requests + b.total_requests == 40  # each once, no more
        assert min(a.total_requests, b.total_requests) >= 12  # spread, not all on one
        assert max(a.max_in_flight, b.max_in_flight) <= 4  # max_concurrency per server

        # a server nobody answers at (connection refused): its requests go to the live one at once
        with OpenAIServer() as gone:
            dead = gone.base_url
        eng = OpenAIEngine(
            "fake", [dead, a.base_url], api_key="", backoff_base_s=5, backoff_max_s=5, timeout_s=5
        )
        before = a.total_requests
        t0 = time.monotonic()
        out = eng.generate(reqs[:10], sampling)
        assert time.monotonic() - t0 < 4  # no 5 s backoff: failover is immediate while a server is up
        assert [c[0].text for c in out] == [expected_text(f"p{i}", 3, 0, 16) for i in range(10)]
        assert a.total_requests - before == 10
        assert eng._servers.down_until[0] > time.monotonic()  # left out for a while

    # every server down: the usual retries and then one error naming the request and the server
    eng = OpenAIEngine("fake", f"{dead},{dead}", api_key="", max_retries=1, backoff_base_s=0.01, timeout_s=2)
    with pytest.raises(Exception, match=r"request 0 failed after 2 attempts.*ConnectError"):
        eng.generate(reqs[:1], sampling)


# -- replicas of the embedded model on a local Ray instance ------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_a_replica_that_cannot_build_its_engine_is_one_line(ray_local):
    from synth.engines.base import EngineError
    from synth.engines.ray import RayEngine

    with pytest.raises(EngineError) as err:  # no CPU asked: it starts beside the other replicas
        RayEngine("openai", "m", replicas=1, actor_options={"num_cpus": 0})
    assert str(err.value) == (
        "ray engine: replica 0 could not build the engine: EngineError: the openai engine needs "
        "--base-url (e.g. http://127.0.0.1:8000/v1)"
    )


@pytest.fixture(scope="module")
def replicas(ray_local):
    from synth.engines.ray import RayEngine

    # one CPU each (Ray's default here), so one torch thread each
    engine = RayEngine("hf", None, replicas=2, engine_kwargs={"batch_size": 8})
    yield engine
    engine.close()


@contextlib.contextmanager
def torch_threads(n: int):
    """This process's engine computes with ``n`` torch threads, as a replica with ``n`` CPUs does:
    the same arithmetic, so the same tokens and log-probs, bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_replicas_answer_as_the_engine_in_one_process(replicas, hf_engine):
    assert (replicas.name, replicas.model) == ("hf", hf_engine.model)
    assert replicas.concurrent_calls and len(set(replicas.replica_pids())) == 2
    reqs = [Request.chat(f"Say one word about {x}.") for x in ("cats", "rain", "tea")]
    labels = [str(i) for i in range(1, 11)]
    with torch_threads(1):
        for sampling in (SamplingParams(n=1, temperature=0.0, max_tokens=8),
                         SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=1)):  # fmt: skip
            assert replicas.generate(reqs, sampling) == hf_engine.generate(reqs, sampling)
        local = hf_engine.choice_logprobs(reqs, "Score:", labels)
    assert replicas.choice_logprobs(reqs, "Score:", labels) == local
    assert replicas.context_length == hf_engine.context_length
    assert replicas.count_prompt_tokens(reqs[0], 100) == hf_engine.count_prompt_tokens(reqs[0], 100)

    # calls from several threads at once (batches in flight) go to both replicas
    before = list(replicas.served)
    sampling = SamplingParams(n=1, temperature=0.0, max_tokens=4)
    threads = [threading.Thread(target=replicas.generate, args=(reqs[:1], sampling)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served = [n - m for n, m in zip(replicas.served, before, strict=True)]
    assert sum(served) == 4 and min(served) >= 1, served  # least-loaded: both replicas answered


@pytest.mark.slow
def test_a_replica_killed_mid_run_loses_and_doubles_nothing(replicas, hf_engine, tmp_path):
    seeds = seeds_file(tmp_path / "seeds.jsonl", SEEDS)
    cfg = dict(seeds=str(seeds), k=2, max_tokens=8, batch_size=1, seed=3, batches_in_flight=4)
    out = tmp_path / "ray"
    killed: list[int] = []

    def kill_replica_0_in_a_call() -> None:  # SIGKILL replica 0's process while it holds a call
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if replicas.loads()[0] > 0 and any(e["event"] == "batch_committed" for e in events(out)):
                pid = replicas.replica_pids()[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_replica_0_in_a_call, daemon=True)
    replaced, retried = replicas.replaced, replicas.retried
    watcher.start()
    run_recipe("general", GeneralConfig(out=str(out), **cfg), replicas).close()
    watcher.join()
    assert killed, "replica 0 never held a call"
    assert replicas.replaced == replaced + 1 and replicas.retried >= retried + 1
    assert killed[0] not in replicas.replica_pids()

    reference = tmp_path / "one-process"
    with torch_threads(1):
        run_recipe("general", GeneralConfig(out=str(reference), **cfg), hf_engine).close()
    assert snapshot(out) == snapshot(reference)  # nothing lost, nothing doubled, nothing different
    assert len(snapshot(out)["generate"]) == len(SEEDS) * 2
    committed_once(out)


# -- kill -9 of a Ray run, then the same command ---------------------------------------------------------
def _ray_processes(driver: int) -> set[int]:
    """Pids of the processes of the Ray instance ``driver`` started (its session is named after it)."""
    name = re.compile(rb"session_[0-9_-]+_%d\b" % driver)
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if name.search((d / "cmdline").read_bytes()):
                    out.add(int(d.name))
            except OSError:
                continue
    return out


@pytest.mark.slow
def test_a_ray_run_killed_with_sigkill_resumes_to_the_rows_of_a_run_never_stopped(tmp_path):
    seeds = seeds_file(tmp_path / "seeds.jsonl", [f"prompt number {i}" for i in range(12)])
    with OpenAIServer(delay_s=0.3) as a, OpenAIServer(delay_s=0.3) as b:
        urls = f"{a.base_url},{b.base_url}"
        common = ["--seeds", str(seeds), "--engine", "openai", "--model", "fake", "--base-url", urls,
                  "--k", "2", "--batch-size", "2", "--seed", "5"]  # fmt: skip
        out = tmp_path / "ray"
        cmd = [sys.executable, "-m", "pipelines.cli", "run", "general", "--out", str(out), *common,
               "--ray", "auto", "--replicas", "2"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                if any(e["event"] == "batch_committed" and e["stage"] == "generate" for e in events(out)):
                    assert _ray_processes(proc.pid), "the run started no Ray instance"
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.02)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
        assert not any(e["event"] == "run_done" for e in events(out))
        deadline = time.monotonic() + 60  # the killed driver's Ray instance goes with it
        while _ray_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _ray_processes(proc.pid), "the killed run left its Ray instance running"

        again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]

        # a run never stopped, in one process: the same rows
        from pipelines.cli import main

        reference = tmp_path / "reference"
        assert main(["run", "general", "--out", str(reference), *common]) == 0
    assert snapshot(out) == snapshot(reference)
    committed_once(out)
    assert sum(e["event"] == "run_done" for e in events(out)) == 1
    for run in (out, reference):
        assert main(["export", str(run), "--to", str(run / "dataset")]) == 0
    exported = {p.relative_to(out / "dataset") for p in (out / "dataset").rglob("*.parquet")}
    assert exported
    import pyarrow.parquet as pq

    for rel in exported:
        assert pq.read_table(out / "dataset" / rel).equals(pq.read_table(reference / "dataset" / rel)), rel
