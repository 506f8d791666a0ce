"""Batches in flight: a slow request holds back its own batch's commit, not the server's other slots.

A run against an OpenAI-compatible server keeps several batches of an engine stage in flight
(``--batches-in-flight``, 16 by default with the openai engine): while one request of batch 0 waits,
the requests of the next batches go out at once; commits stay one per batch, in input order, so the
rows are those of a run with one batch at a time.
"""

from __future__ import annotations

import json

from pipelines.cli import main
from synth.store import Store

try:
    from tests.openai_server import Fault, OpenAIServer
except ImportError:  # pytest's rootdir-relative import
    from openai_server import Fault, OpenAIServer

SLOW_S = 1.5


def _run(tmp_path, name: str, in_flight: int) -> tuple[list[tuple], dict[str, float], float]:
    seeds = tmp_path / "seeds.jsonl"
    lines = [json.dumps({"id": f"p{i}", "prompt": f"question {i}"}) for i in range(12)]
    seeds.write_text("\n".join(lines) + "\n")
    # the first attempt of question 0 (batch 0) is slow, then answered: a slow retry's shape
    with OpenAIServer(schedule={"question 0": [Fault.slow(SLOW_S)]}) as srv:
        out = tmp_path / name
        code = main(
            [
                "run",
                "general",
                "--engine",
                "openai",
                "--base-url",
                srv.base_url,
                "--model",
                srv.model,
                "--seeds",
                str(seeds),
                "--out",
                str(out),
                "--k",
                "1",
                "--batch-size",
                "2",
                "--batches-in-flight",
                str(in_flight),
                "--max-tokens",
                "8",
            ]  # fmt: skip
        )
        assert code == 0
        first = {f"question {i}": srv.hits_for(f"question {i}")[0].t for i in range(12)}
        slow_done = srv.hits_for("question 0")[0].t + SLOW_S
    store = Store(out, read_only=True)
    try:
        rows = store.query("SELECT stage, key, kept, reason, data FROM records ORDER BY stage, seq")
    finally:
        store.close()
    return rows, first, slow_done


def test_later_batches_go_out_while_a_slow_request_waits_and_rows_do_not_change(tmp_path):
    serial_rows, serial_first, serial_slow_done = _run(tmp_path, "serial", 1)
    rows, first, slow_done = _run(tmp_path, "overlap", 4)
    # one batch at a time: batch 1 (questions 2, 3) waits for the slow request of batch 0
    assert serial_first["question 2"] >= serial_slow_done - 0.05
    # four in flight: batches 1-3 (questions 2-7) are asked while batch 0's slow request waits
    assert all(first[f"question {i}"] < slow_done - 0.5 for i in range(2, 8))
    # and the run's rows are exactly those of the serial run, in the same order
    assert rows == serial_rows
    assert any(stage == "generate" for stage, *_ in rows)
