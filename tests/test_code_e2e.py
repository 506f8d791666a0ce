"""`synth run code` (the code recipe) end to end on the real embedded model and the real sandbox,
through the CLI.

A 135M model writes almost no passing code: the test checks the mechanics (every candidate reaches a
verdict, the funnel accounts for every row, stats and export read the run), not the yield.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synth.recipes.code import DEFAULT_CORPUS
from synth.store import Store

pytestmark = pytest.mark.slow
ENV = {**os.environ, "SYNTH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}


def synth(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def test_code_run_on_the_embedded_model(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("roman.py", "intervals.py"):
        shutil.copy(Path(DEFAULT_CORPUS) / name, corpus / name)
    out = tmp_path / "run"
    args = synth(
        "run", "code", "--out", str(out), "--corpus", str(corpus), "--k", "1", "--problems-per-snippet", "1",
        "--max-tokens", "48", "--repair-rounds", "1", "--batch-size", "8", "--languages", "javascript",
        "--seed", "1",
    )  # fmt: skip
    done = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "outcomes:" in done.stdout

    store = Store(out, read_only=True)
    try:
        funnel = {f["stage"]: f for f in store.funnel()}
        outcomes = store.get_meta("outcomes")
        outputs = store.get_meta("outputs")
        solved = store.records("solutions")
        executed = store.records("execute_round0")
        cache = store.cache_size()
    finally:
        store.close()
    assert list(funnel)[:7] == [
        "snippets", "write_problems", "solve", "write_tests", "execute_round0", "repair_round1",
        "execute_round1",
    ]  # fmt: skip
    assert list(funnel)[-3:] == ["bt_document", "bt_regenerate", "bt_judge"]
    assert outputs["prompts"] == "write_problems"
    assert outputs["sft"] == ["solutions", "run_javascript", "bt_judge"]
    assert all(f["done"] for f in funnel.values())
    assert funnel["snippets"]["kept"] == 2 and funnel["write_problems"]["rows_in"] == 2
    # every stage's rows are kept or rejected with a reason, and each stage takes the kept rows of its source
    for f in funnel.values():
        assert sum(f["reasons"].values()) == f["rejected"]
    assert funnel["execute_round0"]["rows_in"] == funnel["solve"]["kept"] == funnel["write_problems"]["kept"]
    # repair round 1 reads every failure of round 0; a sandbox error (not the model's fault) passes
    # through unasked and still rejected
    assert funnel["repair_round1"]["rows_in"] == funnel["execute_round0"]["rejected"]
    sandbox_errors = funnel["execute_round0"]["reasons"].get("sandbox_error", 0)
    assert funnel["repair_round1"]["reasons"].get("sandbox_error", 0) == sandbox_errors
    assert funnel["execute_round1"]["rows_in"] == funnel["repair_round1"]["kept"]
    # each candidate ends with exactly one outcome, and the real sandbox / ruff produced the verdicts
    assert sum(outcomes.values()) == len(solved) == funnel["execute_round0"]["rows_in"]
    assert all(a.reason or a.passed for r in executed for a in r.attempts)
    assert funnel["bt_document"]["rows_in"] == 2 + funnel["solutions"]["kept"]
    assert cache > 0

    stats = subprocess.run(synth("stats", str(out), "--json"), env=ENV, capture_output=True, text=True)
    summary = json.loads(stats.stdout)
    assert summary["capability"] == "code" and summary["models"] == ["SmolLM2-135M-Instruct"]
    assert summary["rows"]["sft"] == sum(funnel[s]["kept"] for s in outputs["sft"])

    # resuming a finished run changes nothing and asks the model nothing new
    again = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    store = Store(out, read_only=True)
    try:
        assert {f["stage"]: f for f in store.funnel()} == funnel and store.cache_size() == cache
    finally:
        store.close()
