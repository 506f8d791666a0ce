"""Throughput of `synth run general --engine openai` under transient server faults, with one batch in
flight at a time against several (``--batches-in-flight``): the ratio to a fault-free run.

The server is the test suite's loopback server (tests/openai_server.py) answering after a fixed
latency; a fraction of attempts gets a 503 (seeded, at most 3 per prompt), which the engine retries
with backoff. With one batch in flight a batch waits for its slowest retry while the other request
slots sit idle; with several, the next batches' requests fill them.

    .venv/bin/python benchmarks/fault_throughput.py --prompts 96 --faults 0,0.2,0.5 --in-flight 1,16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("SYNTH_NO_PROGRESS", "1")

from openai_server import Fault, OpenAIServer  # noqa: E402

from pipelines.cli import main as synth  # noqa: E402


def one_run(prompts: int, fault: float, in_flight: int, latency: float, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        seeds = Path(tmp) / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(prompts)))
        faults = [(fault, Fault.error(503))] if fault else []
        with OpenAIServer(delay_s=latency, random_faults=faults, fault_seed=seed) as srv:
            argv = ["run", "general", "--engine", "openai", "--base-url", srv.base_url, "--model", srv.model,
                    "--seeds", str(seeds), "--out", f"{tmp}/run", "--k", "2", "--batch-size", "8",
                    "--max-tokens", "16", "--batches-in-flight", str(in_flight)]  # fmt: skip
            start = time.perf_counter()
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                code = synth(argv)
            seconds = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"run failed with exit code {code}")
        return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--faults", default="0,0.2,0.5")
    ap.add_argument("--in-flight", default="1,16")
    ap.add_argument("--latency", type=float, default=0.05, help="server latency per request (s)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    faults = [float(x) for x in args.faults.split(",")]
    widths = [int(x) for x in args.in_flight.split(",")]
    print(f"{'in flight':>10}{'faults':>8}{'median s':>10}{'x fault-free':>14}")
    for width in widths:
        base = None
        for fault in faults:
            times = [one_run(args.prompts, fault, width, args.latency, seed) for seed in range(args.repeats)]
            med = statistics.median(times)
            base = base or med
            print(f"{width:>10}{fault:>8.0%}{med:>10.2f}{med / base:>14.2f}")


if __name__ == "__main__":
    main()
