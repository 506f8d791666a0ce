"""`synth view`'s data and API over real stores: filters, pages, whole records, score histograms, the
live read socket of a writing run, read-only, rounds; the browser tests are in test_view_browser.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from synth import live
from synth.records import (
    Message,
    PreferenceRecord,
    Provenance,
    Response,
    SFTRecord,
    StepLabelRecord,
    ToolCall,
    ToolFunction,
)
from synth.stages.code.items import Attempt, Candidate
from synth.store import Store
from synth.view import data
from synth.view.app import create_app


def local(root: Path) -> TestClient:
    """The app as a browser on this machine reaches it (Host: 127.0.0.1)."""
    return TestClient(create_app(root), base_url="http://127.0.0.1:8765")


def snapshot_shows(client: TestClient, stage: str, kept: int, timeout: float = 5.0) -> dict:
    """The funnel once a running run's progress snapshot (at most 0.5 s behind) shows ``kept``."""
    deadline = time.monotonic() + timeout
    while True:
        funnel = client.get("/api/funnel").json()
        got = next((f["kept"] for f in funnel["funnel"] if f["stage"] == stage), None)
        if got == kept or time.monotonic() > deadline:
            return funnel
        time.sleep(0.05)


def _sft(i: int, *, cap: str = "general", rnd: int = 0, judge: float | None = None) -> SFTRecord:
    rec = SFTRecord(
        id=f"r{i}",
        messages=[
            Message(role="user", content=f"question {i} about {cap}"),
            Message(role="assistant", content=f"answer {i}: 50% of_it"),
        ],
        provenance=Provenance(
            capability=cap, model="m", template="t", sampling={"temperature": 0.7}, seed=i, round=rnd
        ),
        meta={"prompt_id": f"p{i // 2}"},
    )
    if judge is not None:
        rec.scores["judge"] = judge
    return rec


def build_run(run: Path) -> dict[str, list[SFTRecord]]:
    """A run of two stages: 'generate' keeps 40 rows; 'judge' rejects some as low_score, some as
    too_long, over two capabilities and two rounds; plus a preference, a step-label and a code stage."""
    store = Store(run)
    gen = [_sft(i, cap="code" if i % 3 == 0 else "general", rnd=1 + i % 2) for i in range(40)]
    store.begin_stage("generate", 40)
    store.commit_batch("generate", "b0", gen[:20])
    store.commit_batch("generate", "b1", gen[20:])
    store.end_stage("generate")
    judged = []
    for rec in gen:
        r = rec.model_copy(deep=True)
        i = int(r.id[1:])
        r.scores["judge"] = float(i % 10)
        r.keep("generate")
        if i % 10 < 3:
            r.reject("judge", "low_score")
        elif i % 7 == 0:
            r.reject("judge", "too_long")
        else:
            r.keep("judge")
        judged.append(r)
    store.begin_stage("judge", 40)
    store.commit_batch("judge", "b0", judged)
    store.end_stage("judge")
    pair = PreferenceRecord(
        id="pair0",
        prompt=[Message(role="user", content="Name a colour.")],
        responses=[
            Response(content="Blue.", label="chosen", score=8.0),
            Response(content="I cannot.", label="rejected", score=2.5),
        ],
        strength="significantly_better",
        provenance=Provenance(capability="general"),
    )
    tool_row = SFTRecord(
        id="tool0",
        messages=[
            Message(role="user", content="What is 2+2?"),
            Message(
                role="assistant",
                content="",
                tool_calls=[
                    ToolCall(id="c1", function=ToolFunction(name="calculator", arguments='{"expr": "2+2"}'))
                ],
            ),
            Message(role="tool", content="4", name="calculator", tool_call_id="c1"),
            Message(role="assistant", content="It is 4."),
        ],
        provenance=Provenance(capability="tools"),
    )
    steps = StepLabelRecord(
        id="steps0", prompt="2+3*4?", completions=["3*4=12", "2+12=15"], labels=[True, False]
    )
    cand = Candidate(
        id="cand0",
        problem_id="pr0",
        snippet_id="sn0",
        problem="Add two numbers.",
        code="def add(a, b):\n    return a - b",
        tests="assert add(1, 2) == 3",
        attempts=[
            Attempt(
                code="def add(a, b):\n    return a - b",
                tests="assert add(1, 2) == 3",
                passed=False,
                reason="test_failed",
                feedback="AssertionError: add(1, 2) == -1",
            )
        ],
        provenance=Provenance(capability="code"),
    )
    cand.reject("execute", "test_failed")
    for stage, rows in (("pairs", [pair]), ("tools", [tool_row]), ("steps", [steps]), ("execute", [cand])):
        store.begin_stage(stage, len(rows))
        store.commit_batch(stage, "b0", rows)
        store.end_stage(stage)
    store.set_meta("outputs", {"sft": ["judge"], "preference": ["pairs"]})
    store.close()
    return {"generate": gen, "judge": judged}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, list[SFTRecord]]]:
    path = tmp_path_factory.mktemp("view") / "run"
    return path, build_run(path)


def keys(page: dict) -> list[str]:
    return [r["key"] for r in page["rows"]]


def test_filters_give_exactly_the_rows_they_name(run):
    path, made = run
    reader = data.RunReader(path)
    judged = made["judge"]

    def expect(pred) -> list[str]:
        return [r.id for r in judged if pred(r)]

    low = reader.rows("judge", kept=False, reason="low_score", limit=200)
    assert keys(low) == expect(lambda r: not r.kept and r.verdicts[-1].reason == "low_score")
    assert low["total"] == len(keys(low)) == 12
    assert keys(reader.rows("judge", kept=True, limit=200)) == expect(lambda r: r.kept)
    code = reader.rows("judge", capability="code", limit=200)
    assert keys(code) == expect(lambda r: r.provenance.capability == "code")
    assert keys(reader.rows("judge", round=2, limit=200)) == expect(lambda r: r.provenance.round == 2)
    band = reader.rows("judge", score="judge", low=4, high=6, limit=200)
    assert keys(band) == expect(lambda r: 4 <= r.scores["judge"] <= 6)
    # text search: the words as the row holds them, LIKE's own characters taken literally
    assert keys(reader.rows("judge", q="question 17 ", limit=200)) == ["r17"]
    assert keys(reader.rows("judge", q="50% of_it", limit=200)) == expect(lambda r: True)
    assert reader.rows("judge", q="50%_of", limit=200)["total"] == 0
    # pages: in run order, the count of all
    first, second = reader.rows("judge", limit=15), reader.rows("judge", offset=15, limit=15)
    assert first["total"] == 40 and keys(first) + keys(second) == [r.id for r in judged][:30]
    with pytest.raises(data.ViewError, match="score range needs a score name"):
        reader.rows("judge", low=1)


def test_facets_record_trail_and_summaries(run):
    path, _ = run
    reader = data.RunReader(path)
    facets = reader.facets("judge")
    assert facets["rows"] == 40
    assert facets["capabilities"] == ["code", "general"] and facets["rounds"] == [1, 2]
    assert facets["scores"] == ["judge"] and facets["reasons"] == {"low_score": 12, "too_long": 4}
    rec = reader.record("judge", "r14")
    assert rec["reason"] == "too_long" and [s["stage"] for s in rec["stages"]] == ["generate", "judge"]
    assert rec["record"]["provenance"]["seed"] == 14 and rec["record"]["verdicts"][-1]["reason"] == "too_long"
    with pytest.raises(data.ViewError, match="no row"):
        reader.record("judge", "nope")
    pair = reader.pairs("pairs")["rows"][0]
    assert pair["strength"] == "significantly_better" and pair["gap"] == 5.5
    assert [r["content"] for r in pair["record"]["responses"]] == ["Blue.", "I cannot."]
    tool = reader.rows("tools")["rows"][0]
    assert tool["response"] == "It is 4."
    steps = reader.rows("steps")["rows"][0]
    assert steps["response"] == "2 steps, 1 good"
    cand = reader.rows("execute")["rows"][0]
    assert cand["prompt"] == "Add two numbers." and "test_failed" in cand["response"]
    assert reader.record("execute", "cand0")["record"]["attempts"][0]["feedback"].startswith("AssertionError")


def test_score_histograms_count_every_row_or_say_they_sample(run, monkeypatch):
    path, made = run
    reader = data.RunReader(path)
    s = reader.scores("judge", bins=10)
    hist = s["scores"]["judge"]
    assert s["every"] == 1 and hist["stats"]["n"] == 40
    assert [b["kept"] + b["rejected"] for b in hist["bins"]] == [4] * 10
    assert sum(b["rejected"] for b in hist["bins"]) == 16
    monkeypatch.setattr(data, "SAMPLE_ROWS", 10)
    sampled = data.RunReader(path).scores("judge", bins=10)
    assert sampled["every"] == 4 and sampled["scores"]["judge"]["stats"]["n"] == 10


def test_the_api_answers_and_refuses_what_it_should(run):
    path, _ = run
    client = local(path)
    # a page elsewhere that rebinds its name to 127.0.0.1 sends its own name: refused
    assert (
        TestClient(create_app(path)).get("/api/runs", headers={"host": "evil.example:8765"}).status_code
        == 400
    )
    assert (
        TestClient(create_app(path, "0.0.0.0")).get("/api/runs", headers={"host": "box.lan"}).status_code
        == 200
    )
    assert client.get("/api/runs").json()["runs"] == [{"run": ".", "live": False}]
    funnel = client.get("/api/funnel", params={"run": "."}).json()
    assert funnel["live"] is False
    judge = next(f for f in funnel["funnel"] if f["stage"] == "judge")
    assert judge["reasons"] == {"low_score": 12, "too_long": 4}
    r = client.get(
        "/api/rows", params={"run": ".", "stage": "judge", "kept": "rejected", "reason": "too_long"}
    )
    assert r.status_code == 200 and keys(r.json()) == ["r7", "r14", "r28", "r35"]
    assert client.get("/api/rows", params={"run": "..", "stage": "judge"}).status_code == 400
    assert (
        "kept must be" in client.get("/api/rows", params={"stage": "judge", "kept": "maybe"}).json()["error"]
    )
    assert client.get("/api/rows", params={"stage": "judge", "min": "x", "score": "judge"}).status_code == 400
    assert client.get("/api/record", params={"stage": "judge"}).status_code == 400
    page = client.get("/")
    assert page.status_code == 200 and "synth view" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_the_viewer_never_writes_the_store(tmp_path):
    """The run is made by another process: a writing store opened here would rewrite the run's lock
    file with this process's pid (the database file alone may come out of a no-op open unchanged)."""
    path = tmp_path / "run"
    code = f"from pathlib import Path; from test_view import build_run; build_run(Path({str(path)!r}))"
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, check=True, timeout=120)

    def digests() -> list[str]:
        return [hashlib.sha256((path / f).read_bytes()).hexdigest() for f in ("synth.duckdb", "synth.lock")]

    before = digests()
    client = local(path)
    for url, params in [
        ("runs", {}),
        ("funnel", {}),
        ("meta", {}),
        ("facets", {"stage": "judge"}),
        ("rows", {"stage": "judge", "q": "x"}),
        ("pairs", {"stage": "pairs"}),
        ("record", {"stage": "judge", "key": "r1"}),
        ("scores", {"stage": "judge"}),
        ("rounds", {}),
    ]:
        assert client.get(f"/api/{url}", params={"run": ".", **params}).status_code == 200, url
    assert digests() == before
    assert not (path / "synth.duckdb.wal").exists()


def test_a_running_run_answers_reads_through_its_socket(tmp_path):
    """While a run holds its store (DuckDB admits no other reader), the page's queries go to the run
    itself: rows committed so far, not one from a batch in progress; writes are refused."""
    path = tmp_path / "run"
    writer = Store(path)
    try:
        writer.begin_stage("generate", 4)
        writer.commit_batch("generate", "b0", [_sft(0), _sft(1)])
        client = local(path)
        funnel = snapshot_shows(client, "generate", 2)
        assert funnel["live"] is True and funnel["funnel"][0]["kept"] == 2
        assert keys(client.get("/api/rows", params={"run": ".", "stage": "generate"}).json()) == ["r0", "r1"]
        writer.commit_batch("generate", "b1", [_sft(2), _sft(3)])
        assert client.get("/api/rows", params={"run": ".", "stage": "generate"}).json()["total"] == 4
        record = client.get("/api/record", params={"run": ".", "stage": "generate", "key": "r3"}).json()
        assert record["record"]["messages"][0]["content"] == "question 3 about general"
        for sql in ("DELETE FROM records", "SELECT 1; DROP TABLE records", "COPY records TO '/tmp/x.csv'"):
            with pytest.raises(live.LiveReadError, match="refused"):
                live.query(path, sql)
        # another process reads the live run too
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from synth import live; print(live.query({str(path)!r}, 'SELECT count(*) FROM records'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stdout.strip() == "[(4,)]"
    finally:
        writer.close()
    assert not live.socket_path(path).exists()
    with pytest.raises(live.LiveReadError, match="answers no reads"):
        live.query(path, "SELECT 1")
    assert local(path).get("/api/funnel").json()["live"] is False


def test_runs_and_rounds_of_a_round_directory(tmp_path):
    for rnd, acc in ((1, 0.25), (2, 0.5)):
        build_run(tmp_path / f"round_{rnd}" / "gen" / "general")
        (tmp_path / f"round_{rnd}" / "eval_suite").mkdir(parents=True)
        (tmp_path / f"round_{rnd}" / "eval_suite" / "metrics.json").write_text(
            json.dumps({"math": {"accuracy": acc, "n": 4}, "code": {"pass@1": 0.0, "n": 2}})
        )
    (tmp_path / "round_1" / "gen" / "general" / "dataset").mkdir()
    assert data.find_runs(tmp_path) == ["round_1/gen/general", "round_2/gen/general"]
    rounds = data.rounds(tmp_path)
    assert rounds["rounds"] == [1, 2]
    assert rounds["metrics"] == {"suite/math/accuracy": [0.25, 0.5], "suite/code/pass@1": [0.0, 0.0]}
    client = local(tmp_path)
    assert client.get("/api/runs").json()["rounds"] is True
    rows = client.get(
        "/api/rows", params={"run": "round_2/gen/general", "stage": "judge", "reason": "low_score"}
    )
    assert rows.json()["total"] == 12


def test_synth_view_refuses_what_it_cannot_serve(tmp_path):
    def synth(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "view", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    missing = synth(str(tmp_path / "nope"))
    assert missing.returncode != 0 and "no such run directory" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = synth(str(tmp_path / "empty"))
    assert empty.returncode != 0 and "no run store" in empty.stderr


def test_a_run_that_answers_no_reads_still_shows_its_funnel(tmp_path, monkeypatch):
    """A run started with SYNTH_LIVE_READS=0 (or before live reads existed): the funnel (its progress
    snapshot) shows, and rows say why they cannot be shown (503), nothing else breaks."""
    path = tmp_path / "run"
    monkeypatch.setenv("SYNTH_LIVE_READS", "0")
    writer = Store(path)
    try:
        writer.begin_stage("generate", 2)
        writer.commit_batch("generate", "b0", [_sft(0), _sft(1)])
        writer.end_stage("generate")  # writes the snapshot at once
        client = local(path)
        funnel = snapshot_shows(client, "generate", 2)
        assert funnel["live"] is True
        assert [(f["stage"], f["kept"]) for f in funnel["funnel"]] == [("generate", 2)]
        rows = client.get("/api/rows", params={"stage": "generate"})
        assert rows.status_code == 503 and "answers no reads" in rows.json()["error"]
    finally:
        writer.close()
    assert local(path).get("/api/rows", params={"stage": "generate"}).json()["total"] == 2
