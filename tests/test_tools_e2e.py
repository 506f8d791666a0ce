"""`synth run tools` end to end: on the real embedded model (its yield is whatever it is; the
mechanics must hold), its export, and kill -9 / resume at several points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from killing import committed, events, run_and_kill

from synth.store import Store

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
WORD_COUNT = '''
def word_count(text: str) -> int:
    """Count the words in a text.

    Args:
        text: The text whose words to count.
    """
    return len(text.split())
'''


def check_export(dataset: Path, run_dir: Path) -> int:
    """Every exported tool call has its executed result as the next turn (the run's own record of
    that call: same tool, same arguments, its output), and every row ends with an answer; returns
    the number of rows. The ``tools`` column is a JSON list naming every called tool."""
    import synth.recipes.tools  # noqa: F401 - registers the recipe's record kinds

    files = sorted((dataset / "sft_tools").glob("*.parquet"))
    assert files and all("tools" in pq.read_schema(f).names for f in files)
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]  # an empty split reads too
    store = Store(run_dir, read_only=True)
    try:
        traces = {t.id: t for t in store.iter_records("check", kept=True)}
    finally:
        store.close()
    for row in rows:
        names = {t["function"]["name"] for t in json.loads(row["tools"])}
        msgs, executed = row["messages"], iter(traces[row["id"]].calls)
        for i, m in enumerate(msgs):
            for call in m["tool_calls"] or []:
                ran, result = next(executed), msgs[i + 1]
                assert call["function"]["name"] in names
                assert result["role"] == "tool" and result["tool_call_id"] == call["id"]
                assert ran.ok and (ran.name, ran.arguments) == (
                    call["function"]["name"],
                    call["function"]["arguments"],
                )
                assert result["content"] == ran.output
        assert msgs[-1]["role"] == "assistant" and not msgs[-1]["tool_calls"] and msgs[-1]["content"].strip()
    return len(rows)


def test_the_recipe_on_the_embedded_model(tmp_path, hf_engine, capsys):
    from pipelines.cli import main
    from synth.recipe import run_recipe
    from synth.recipes.tools import ToolsConfig

    tools = tmp_path / "mytools.py"
    tools.write_text(WORD_COUNT)
    cfg = ToolsConfig(out=str(tmp_path / "run"), core_tools=["calculator"], tools=str(tools), k=2,
                      queries_per_tool=1, multi_per_tool=1, apigen_per_function=1, max_calls=2, max_tokens=48,
                      request_max_tokens=40, judge_max_tokens=12, batch_size=16)  # fmt: skip
    run = run_recipe("tools", cfg, hf_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    outcomes = run.store.get_meta("outcomes")
    unexplained = run.store.query("SELECT count(*) FROM records WHERE NOT kept AND coalesce(reason, '') = ''")
    run.close()
    print("funnel:", {k: (f["kept"], f["reasons"]) for k, f in funnel.items()})
    print("outcomes:", outcomes)
    assert unexplained == [(0,)]
    assert (
        funnel["act_0"]["rows_in"] == funnel["write_queries"]["kept"] + funnel["write_multi_queries"]["kept"]
    )
    assert funnel["act_0"]["kept"] + funnel["act_0"]["rejected"] == 2 * funnel["act_0"]["rows_in"]
    assert outcomes["traces"] == 2 * funnel["act_0"]["rows_in"]
    assert 0.0 <= outcomes["executable share"] <= 1.0 and outcomes["sft rows"] == funnel["sft"]["kept"]
    assert {"semantic_check", "format_check", "apigen_execute", "check"} <= set(funnel)

    assert main(["stats", str(tmp_path / "run")]) == 0
    assert "act_0" in capsys.readouterr().out
    out = tmp_path / "ds"
    assert main(["export", str(tmp_path / "run"), "--to", str(out), "--test-fraction", "0"]) == 0
    assert check_export(out, tmp_path / "run") == outcomes["sft rows"]
    assert "sft_tools" in (out / "README.md").read_text()


# -- kill -9 and resume --------------------------------------------------------------------------
ENV = {**os.environ, "SYNTH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}


def snapshot(run_dir: Path) -> dict:
    store = Store(run_dir, read_only=True)
    try:
        rows = store.query("SELECT stage, key, kept, reason, data FROM records ORDER BY stage, seq")
        stages = store.query("SELECT stage, rows_in, done FROM stages ORDER BY position")
        meta = {k: store.get_meta(k) for k in ("outputs", "outcomes", "tools_skipped", "data_sources")}
        return {"rows": rows, "stages": stages, "meta": meta}
    finally:
        store.close()


def test_killed_runs_resume_to_the_rows_of_an_uninterrupted_run(tmp_path):
    """kill -9 at six points (each in a process that resumed the last), then the same command: the
    store holds exactly the rows of a run never stopped, and no finished batch ran twice. The model is
    the scripted one of test_tools behind a real HTTP server (a subprocess needs one); the tools run
    for real (sandbox, calculator worker, search)."""
    sys.path.insert(0, str(HERE))
    from conftest import ScriptedEngine
    from openai_server import OpenAIServer
    from test_tools import scripted

    with OpenAIServer(engine=ScriptedEngine(scripted), delay_s=0.01) as srv:

        def args(out: Path) -> list[str]:
            return [sys.executable, "-m", "pipelines.cli", "run", "tools", "--out", str(out),
                    "--engine", "openai", "--model", "fake", "--base-url", srv.base_url, "--k", "2",
                    "--queries-per-tool", "1", "--multi-per-tool", "1", "--apigen-per-function", "1",
                    "--batch-size", "2"]  # fmt: skip

        reference = tmp_path / "reference"
        subprocess.run(args(reference), check=True, capture_output=True, timeout=600, env=ENV)
        out = tmp_path / "killed"
        points = [
            lambda evs: any(e["event"] == "run_start" for e in evs),
            committed("write_queries", 2),
            committed("act_0", 3),
            committed("execute_1", 1),
            committed("apigen_execute", 1),
            committed("semantic_check", 1),
        ]
        for point in points:
            assert run_and_kill(args(out), out, point), events(out)[-3:]
        subprocess.run(args(out), check=True, capture_output=True, timeout=600, env=ENV)

    got, want = snapshot(out), snapshot(reference)
    assert got["stages"] == want["stages"] and got["meta"] == want["meta"]
    assert got["rows"] == want["rows"]
    assert want["meta"]["outcomes"]["sft rows"] > 0
    evs = events(out)
    assert sum(e["event"] == "run_done" for e in evs) == 1
    batches = [(e["stage"], e["batch"]) for e in evs if e["event"] == "batch_committed"]
    assert len(batches) == len(set(batches)), "a finished batch was committed twice"
