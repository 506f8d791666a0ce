"""Kill -9 at random points of a streaming run (the store benchmark's run, at a smaller size) and
resume: the rows are those of an uninterrupted run, and no finished batch is committed twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from synth.store import Store

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SYNTH_NO_PROGRESS": "1"}


def bench(out: Path) -> list[str]:
    script = str(ROOT / "benchmarks" / "store_scale.py")
    return [sys.executable, script, "--prompts", "3000", "--k", "2", "--batch-size", "100", "--out", str(out)]


def events(run: Path) -> list[dict]:
    p = run / "run" / "events.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.endswith("}")] if p.exists() else []


def snapshot(out: Path) -> dict:
    store = Store(out / "run", read_only=True)
    try:
        rows = store.query("SELECT stage, key, seq, kept, reason, data FROM records ORDER BY stage, seq")
        stages = store.query("SELECT stage, rows_in, done FROM stages ORDER BY position")
        return {"rows": rows, "stages": stages, "outputs": store.get_meta("outputs")}
    finally:
        store.close()


def test_random_kills_then_resume_give_the_uninterrupted_rows(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(bench(reference), env=ENV, check=True, capture_output=True, timeout=600)
    expected = snapshot(reference)
    total = sum(e["event"] == "batch_committed" for e in events(reference))
    assert total > 50 and len(expected["rows"]) > 20_000

    out = tmp_path / "killed"
    rng = random.Random(7)
    kills = 0
    for _ in range(6):
        done = sum(e["event"] == "batch_committed" for e in events(out))
        target = done + rng.randint(1, max(1, (total - done) // 3))
        proc = subprocess.Popen(bench(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if sum(e["event"] == "batch_committed" for e in events(out)) >= target:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.01)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before its kill point"
    subprocess.run(bench(out), env=ENV, check=True, capture_output=True, timeout=600)

    assert kills == 6
    assert snapshot(out) == expected
    committed = [(e["stage"], e["batch"]) for e in events(out) if e["event"] == "batch_committed"]
    assert len(committed) == len(set(committed)) == total, "a finished batch was committed twice"
