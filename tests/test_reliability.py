"""Hostile use of `synth run` / `stats` / `export` on a run directory: a changed seed file, a run in
progress, a corrected command after a failed one, bad inputs and a full disk. Each case goes through
the command line (`pipelines.cli.main`, or the `synth` script in a subprocess) with a scripted engine,
and ends in rows that are right or in one line that starts with `error:`."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from pipelines.cli import main
from synth.pipeline import Run, SourceChanged
from synth.records import SFTRecord
from synth.store import PROGRESS_NAME, Store, running_pid

ROOT = Path(__file__).resolve().parents[1]
SYNTH = str(Path(sys.executable).parent / "synth")
ENV = {**os.environ, "SYNTH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}


class Scripted:
    """Replies from the prompt (the judge gets unparseable ones: its rows are rejected, not lost)."""

    name = "scripted"
    model = "scripted-model"

    def generate(self, requests, sampling):
        from synth.engines.base import Completion

        return [
            [
                Completion(
                    text=f"answer {j}: {r.messages[-1]['content'][:30]}",
                    prompt_tokens=5,
                    completion_tokens=3,
                    finish_reason="stop",
                )  # fmt: skip
                for j in range(sampling.n)
            ]
            for r in requests
        ]


@pytest.fixture
def scripted(monkeypatch):
    """`synth run` builds this engine instead of the configured one."""
    monkeypatch.setattr("synth.recipe.get_engine", lambda *a, **kw: Scripted())
    monkeypatch.setenv("SYNTH_NO_PROGRESS", "1")


def seeds_file(path: Path, prompts: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": k, "prompt": v}) + "\n" for k, v in prompts.items()))
    return path


def general(seeds: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "general", "--seeds", str(seeds), "--out", str(out), "--k", "2", "--batch-size", "2",
            *extra]  # fmt: skip


def rows(run_dir: Path) -> list[tuple]:
    store = Store(run_dir, read_only=True)
    try:
        return store.query("SELECT stage, key, seq, kept, reason, data FROM records ORDER BY stage, seq")
    finally:
        store.close()


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


PROMPTS = {f"p{i}": f"Question number {i}?" for i in range(4)}


# -- 1. a changed seed file -----------------------------------------------------------------------------
def test_a_changed_seed_file_is_refused_with_what_changed(tmp_path, scripted, capsys):
    seeds = seeds_file(tmp_path / "seeds.jsonl", PROMPTS)
    out = tmp_path / "run"
    assert main(general(seeds, out)) == 0
    before = rows(out)
    capsys.readouterr()

    changed = {**PROMPTS, "p1": "An edited question?", **{f"n{i}": f"New question {i}?" for i in range(10)}}
    seeds_file(seeds, changed)
    assert main(general(seeds, out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "changed since this run started (10 added, 1 edited, 0 removed;" in line
    assert "added: n0, n1, n2, n3, n4 ...; edited: p1)" in line and str(out) in line
    assert rows(out) == before  # nothing was written

    seeds_file(seeds, {k: v for k, v in PROMPTS.items() if k != "p3"})
    assert main(general(seeds, out)) == 2
    assert "(0 added, 0 edited, 1 removed; removed: p3)" in capsys.readouterr().err

    seeds_file(seeds, PROMPTS)  # restored: the run resumes as it was
    assert main(general(seeds, out)) == 0
    assert rows(out) == before


def test_a_source_stopped_half_way_goes_on_only_from_the_same_input(tmp_path):
    def items(texts):
        for i, text in enumerate(texts):
            if text is None:
                raise KeyboardInterrupt  # killed while the source is written
            yield SFTRecord(id=f"p{i}", messages=[{"role": "user", "content": text}])

    run = Run(tmp_path, config={})
    with pytest.raises(KeyboardInterrupt):
        run.source("in", items(["a", "b", "c", None]), batch_size=2)  # one batch committed: a, b
    run.close()
    run = Run(tmp_path, config={})
    with pytest.raises(SourceChanged, match=r"changed since this run started \(its row 1, id p0, differs"):
        run.source("in", items(["A (edited)", "b", "c", "d"]), batch_size=2)
    src = run.source("in", items(["a", "b", "c", "d", "e"]), batch_size=2)  # the same start: goes on
    assert [r.messages[0].content for r in run.records(src)] == ["a", "b", "c", "d", "e"]
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    batches = [e["batch"] for e in events if e["event"] == "batch_committed"]
    assert len(batches) == len(set(batches)) == 3  # the first batch was not written again
    run.close()


def test_an_empty_seed_file_is_an_error(tmp_path, scripted, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(general(empty, tmp_path / "run")) == 2
    assert f"{empty}: no prompts to run: it is empty" in one_error_line(capsys.readouterr().err)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 1}\nnot json\n')
    assert main(general(bad, tmp_path / "run2", "--skip-invalid")) == 2
    assert "no prompts to run: all 2 rows are malformed (quarantined)" in capsys.readouterr().err


# -- 3. one failed command does not poison its --out ------------------------------------------------------
def test_a_failed_command_does_not_block_the_corrected_one(tmp_path, scripted, capsys):
    seeds = seeds_file(tmp_path / "seeds.jsonl", PROMPTS)
    out = tmp_path / "run"
    assert main(general(tmp_path / "seedz.jsonl", out, "--k", "3")) == 2  # mistyped: no row written
    assert "input file not found" in capsys.readouterr().err
    assert main(general(seeds, out)) == 0  # other seeds, other k: the corrected command runs
    config = _config(out)
    assert config["seeds"] == str(seeds) and config["k"] == 2 and rows(out)


def _config(out: Path) -> dict:
    store = Store(out, read_only=True)
    try:
        return store.get_meta("config")
    finally:
        store.close()


def test_only_options_that_change_rows_block_a_resume(tmp_path, scripted, capsys):
    seeds = seeds_file(tmp_path / "seeds.jsonl", PROMPTS)
    out = tmp_path / "run"
    assert main(general(seeds, out)) == 0
    before = rows(out)
    # another server URL, batch size, --skip-invalid: the same rows, the run resumes (and is finished)
    assert (
        main([*general(seeds, out), "--batch-size", "3", "--skip-invalid", "--base-url", "http://h:1/v1"])
        == 0
    )
    assert rows(out) == before and _config(out)["base_url"] == "http://h:1/v1"
    capsys.readouterr()
    assert main([*general(seeds, out), "--k", "3", "--max-tokens", "9"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "different configuration (k: 2 -> 3; max_tokens: 256 -> 9)" in line


def test_a_stage_resumed_with_another_batch_size_keeps_its_batches(tmp_path):
    def stage_rows(batch):
        if stage_rows.fail and len(stage_rows.seen) == 2:
            raise KeyboardInterrupt
        stage_rows.seen.append([r.id for r in batch])
        return [r.model_copy(update={"id": r.id + "-out"}) for r in batch]

    stage_rows.name, stage_rows.seen, stage_rows.fail = "gen", [], True
    items = [SFTRecord(id=f"p{i}", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(7)]
    run = Run(tmp_path, config={})
    with pytest.raises(KeyboardInterrupt):
        run.map(stage_rows, run.source("in", items), batch_size=2)
    run.close()
    stage_rows.fail = False
    run = Run(tmp_path, config={})
    out = run.map(stage_rows, run.source("in", items), batch_size=3)  # a resume with --batch-size 3
    assert [r.id for r in run.records(out)] == [f"p{i}-out" for i in range(7)]
    assert stage_rows.seen == [["p0", "p1"], ["p2", "p3"], ["p4", "p5"], ["p6"]]
    run.close()


# -- 2. a run in progress -----------------------------------------------------------------------------------
HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from synth.engines.base import Completion
    from synth.recipe import run_recipe
    from synth.recipes.general import GeneralConfig

    seeds, out, release = sys.argv[1], sys.argv[2], Path(sys.argv[3])

    class Slow:
        name, model, calls = "scripted", "scripted-model", 0

        def generate(self, requests, sampling):
            self.calls += 1
            while self.calls == 2 and not release.exists():  # the run waits here, batch 1 committed
                time.sleep(0.05)
            return [[Completion(text=f"answer {j}", prompt_tokens=5, completion_tokens=3,
                                finish_reason="stop") for j in range(sampling.n)] for r in requests]

    run_recipe("general", GeneralConfig(seeds=seeds, out=out, k=2, batch_size=2), Slow()).close()
    """
)


def start_holder(tmp_path: Path, seeds: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    release = tmp_path / "release"
    proc = subprocess.Popen([sys.executable, str(script), str(seeds), str(out), str(release)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline:
        log = out / "events.jsonl"
        events = (
            [json.loads(x) for x in log.read_text().splitlines() if x.endswith("}")] if log.exists() else []
        )
        if any(e["event"] == "batch_committed" and e["stage"] == "generate" for e in events):
            return proc, release
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the held run never committed a batch")


def test_stats_export_and_a_second_run_while_a_run_is_in_progress(tmp_path, scripted, capsys):
    seeds = seeds_file(tmp_path / "seeds.jsonl", PROMPTS)
    out = tmp_path / "run"
    proc, release = start_holder(tmp_path, seeds, out)
    try:
        # stats: the progress so far, from the snapshot (the `synth` script, as a user runs it)
        done = subprocess.run([SYNTH, "stats", str(out)], env=ENV, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"run in progress (pid {proc.pid}: holder.py " in done.stderr
        assert "funnel so far" in done.stdout and "generate (unfinished)" in done.stdout
        as_json = subprocess.run([SYNTH, "stats", str(out), "--json"], env=ENV, capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
        snap = json.loads(as_json.stdout)
        assert snap["running"] and snap["pid"] == proc.pid
        assert {f["stage"]: f["kept"] for f in snap["funnel"]}["seeds"] == 4
        # export: one line, non-zero
        assert main(["export", str(out), "--to", str(tmp_path / "ds")]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"a run is in progress there (pid {proc.pid}: holder.py" in line
        # a second writer: one line naming the running process
        assert main(general(seeds, out)) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"is in use by another process (pid {proc.pid}: holder.py {seeds} {out}" in line
        assert running_pid(out) == proc.pid  # for callers that only need to know
    finally:
        release.touch()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()
    assert running_pid(out) is None
    capsys.readouterr()
    assert main(["stats", str(out)]) == 0 and "final rows" in capsys.readouterr().out


def test_a_run_killed_with_sigkill_leaves_no_lock_behind(tmp_path, scripted, capsys):
    seeds = seeds_file(tmp_path / "seeds.jsonl", PROMPTS)
    out = tmp_path / "run"
    proc, _ = start_holder(tmp_path, seeds, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert running_pid(out) is None and (out / "synth.lock").exists()
    assert main(general(seeds, out)) == 0  # the same command resumes


def test_the_progress_snapshot_is_the_funnel_of_the_store(tmp_path, scripted):
    seeds = seeds_file(tmp_path / "seeds.jsonl", PROMPTS)
    assert main(general(seeds, tmp_path / "run")) == 0
    store = Store(tmp_path / "run", read_only=True)
    snap = json.loads((tmp_path / "run" / PROGRESS_NAME).read_text())
    assert snap["funnel"] == store.funnel() and snap["pid"] == os.getpid()
    store.close()


# -- 4. errors, not tracebacks ------------------------------------------------------------------------------
def test_a_seed_line_that_is_not_utf8(tmp_path, scripted, capsys):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n{"prompt": "also fine"}\n')
    assert main(general(seeds, tmp_path / "run")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{seeds}:2: field '<encoding>': not UTF-8: byte 0xe9 at column 16" in line
    assert main(general(seeds, tmp_path / "run2", "--skip-invalid")) == 0
    store = Store(tmp_path / "run2", read_only=True)
    assert [(q["line"], q["field"]) for q in store.quarantined()] == [(2, "<encoding>")]
    assert store.count("seeds") == 2
    store.close()


def test_bad_paths_are_one_line_errors(tmp_path, scripted, capsys):
    seeds = seeds_file(tmp_path / "seeds.jsonl", PROMPTS)
    assert main(general(tmp_path, tmp_path / "run")) == 2  # a directory as --seeds
    assert f"{tmp_path} is a directory, not a JSONL file" in one_error_line(capsys.readouterr().err)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(general(seeds, afile / "run")) == 2  # --out under a regular file
    assert f"{afile} is a file" in one_error_line(capsys.readouterr().err)
    assert main(general(seeds, afile)) == 2
    assert f"cannot use {afile} as a run directory: it is a file" in one_error_line(capsys.readouterr().err)


def test_a_missing_model_stops_before_the_run_opens(tmp_path, capsys):
    seeds = seeds_file(tmp_path / "seeds.jsonl", PROMPTS)
    for model, says in [
        (str(tmp_path / "no-such-model"), "no such file or directory"),
        ("./models/nope", "no such file or directory"),
        ("nobody-synth-test/no-such-model", "not a folder, and not a hub id in the local Hugging Face cache"),
    ]:
        assert main(general(seeds, tmp_path / "run", "--model", model)) == 2
        assert f"--model {model}: {says}" in one_error_line(capsys.readouterr().err)
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "error",
    [
        duckdb.IOException('Could not write file "synth.duckdb.wal": No space left on device'),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=["duckdb", "oserror"],
)
def test_a_full_disk_is_one_line_and_the_same_command_resumes(tmp_path, scripted, capsys, monkeypatch, error):
    seeds = seeds_file(tmp_path / "seeds.jsonl", PROMPTS)
    assert main(general(seeds, tmp_path / "reference")) == 0
    commit = Store.commit_batch
    calls = {"n": 0}

    def full_once(self, stage, batch, records):
        calls["n"] += 1
        if calls["n"] == 3:
            raise error
        return commit(self, stage, batch, records)

    monkeypatch.setattr(Store, "commit_batch", full_once)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(general(seeds, out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{out}: the disk is full" in line and "run the same command again to resume" in line
    kept = rows(out)
    assert kept and {r[0] for r in kept} == {"seeds", "generate"}  # the rows so far stay
    assert main(general(seeds, out)) == 0
    assert rows(out) == rows(tmp_path / "reference")
