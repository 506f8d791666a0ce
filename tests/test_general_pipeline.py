"""`synth run general` end to end on the real embedded model, and kill -9 / resume at several points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from killing import committed, events, run_and_kill

from synth.store import Store

pytestmark = pytest.mark.slow

SEEDS = [
    "What is the capital of Italy?",
    "Name a fruit that is yellow.",
    "What is 3 + 4?",
    "Say something kind.",
]


def synth(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


ENV = {**os.environ, "SYNTH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("seeds") / "seeds.jsonl"
    p.write_text("".join(json.dumps({"id": f"s{i}", "prompt": t}) + "\n" for i, t in enumerate(SEEDS)))
    return p


def run_args(seeds: Path, out: Path) -> list[str]:
    return synth(
        "run", "general", "--seeds", str(seeds), "--out", str(out), "--k", "3", "--max-tokens", "24",
        "--batch-size", "1", "--seed", "3", "--top-fraction", "0.5",
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference_run(seeds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "reference"
    subprocess.run(run_args(seeds, out), check=True, env=ENV, capture_output=True, timeout=600)
    return out


def snapshot(run_dir: Path) -> dict[str, list[tuple[str, bool, str]]]:
    store = Store(run_dir, read_only=True)
    try:
        rows = store.db.execute("SELECT stage, key, kept, data FROM records ORDER BY stage, seq").fetchall()
        cache = store.cache_size()
    finally:
        store.close()
    out: dict[str, list] = {"_cache_entries": [cache]}
    for stage, key, kept, data in rows:
        out.setdefault(stage, []).append((key, kept, data))
    return out


def stage_done(stage: str):
    return lambda evs: any(e["event"] == "stage_done" and e["stage"] == stage for e in evs)


def test_run_stats_export_round_trip(reference_run, tmp_path):
    funnel = Store(reference_run, read_only=True)
    stages = [f["stage"] for f in funnel.funnel()]
    gen = next(f for f in funnel.funnel() if f["stage"] == "generate")
    funnel.close()
    assert stages == ["seeds", "generate", "clean", "judge", "best_of_k", "top_fraction", "preference_pairs"]
    assert (gen["rows_in"], gen["kept"]) == (4, 12)

    stats = subprocess.run(
        synth("stats", str(reference_run), "--json"), env=ENV, capture_output=True, text=True, check=True
    )
    summary = json.loads(stats.stdout)
    assert summary["funnel"][1]["stage"] == "generate"
    assert summary["models"] == ["SmolLM2-135M-Instruct"]
    png = tmp_path / "funnel.png"
    subprocess.run(
        synth("stats", str(reference_run), "--plot", str(png)), env=ENV, check=True, capture_output=True
    )
    assert png.stat().st_size > 1000

    ds_dir = tmp_path / "ds"
    subprocess.run(
        synth("export", str(reference_run), "--to", str(ds_dir)), env=ENV, check=True, capture_output=True
    )
    card = (ds_dir / "README.md").read_text()
    assert "config_name: sft" in card and "generate" in card
    n_sft = summary["rows"]["sft"]
    assert n_sft >= 1
    # own cache dir: datasets keys its cache by folder name, so two exports both named "ds" collide
    sft = datasets.load_dataset(str(ds_dir), "sft", cache_dir=str(tmp_path / "hf-cache"))
    assert sum(len(s) for s in sft.values()) == n_sft
    row = next(iter(sft.values()))[0]
    assert row["messages"][-1]["role"] == "assistant" and row["messages"][0]["role"] == "user"
    assert json.loads(row["provenance"])["model"] == "SmolLM2-135M-Instruct"


def test_killed_runs_resume_to_the_same_rows(reference_run, seeds, tmp_path):
    out = tmp_path / "killed"
    args = run_args(seeds, out)
    kill_points = [
        committed("generate", 1),  # mid-generation
        committed("generate", 2),  # mid-generation, in a process that resumed
        stage_done("clean"),  # between stages: the judge has not started
        lambda evs: any(e["event"] == "run_start" for e in evs),  # right at start-up
    ]
    for point in kill_points:  # every point comes before the run could finish: each kill is real
        assert run_and_kill(args, out, point), events(out)
    subprocess.run(args, check=True, env=ENV, capture_output=True, timeout=600)

    assert snapshot(out) == snapshot(reference_run)
    evs = events(out)
    assert sum(e["event"] == "run_done" for e in evs) == 1
    batches = [(e["stage"], e["batch"]) for e in evs if e["event"] == "batch_committed"]
    assert len(batches) == len(set(batches)), "a finished batch was generated twice"


def test_bad_seed_file_stops_with_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"messages": [{"role": "robot", "content": "hi"}]}\n')
    r = subprocess.run(
        synth("run", "general", "--seeds", str(bad), "--out", str(tmp_path / "r")),
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert f"{bad}:2: field 'messages.0.role'" in r.stderr
