"""Executions per second of a tiny Python program: bwrap sandbox vs a bare subprocess.

Both run in this process, round after round in alternation so drift hits both alike; we report
the median over rounds. `--pool` adds run_many (thread pool sized to the machine) throughput.

    .venv/bin/python benchmarks/sandbox_throughput.py [--runs 40] [--rounds 5] [--pool]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandboxes import Job, Limits, get_backend, run, run_many  # noqa: E402

PROGRAM = "print(sum(range(100)))\n"
EXPECTED = "4950\n"
PYTHON = "/usr/bin/python3"  # the interpreter the sandbox uses, so only isolation differs


def rate(execute: Callable[[], str], runs: int) -> float:
    started = time.perf_counter()
    for _ in range(runs):
        if execute() != EXPECTED:
            raise SystemExit("unexpected output: the benchmark would measure a failure")
    return runs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="executions per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pool", action="store_true", help="also measure run_many")
    args = parser.parse_args()

    limits = Limits(timeout_s=10, memory_mb=256)
    backend = get_backend("local")  # fails clearly when bwrap is missing
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "tiny.py")
        script.write_text(PROGRAM)

        def bare() -> str:
            cmd = [PYTHON, "-B", "-s", str(script)]
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout

        def isolated() -> str:
            files = {"tiny.py": PROGRAM}
            return run(files, language="python", entry="tiny.py", limits=limits, backend=backend).stdout

        bare(), isolated()  # warm caches
        rates: dict[str, list[float]] = {"bare subprocess": [], "bwrap sandbox": []}
        if args.pool:
            rates["bwrap run_many"] = []
        for _ in range(args.rounds):
            rates["bare subprocess"].append(rate(bare, args.runs))
            rates["bwrap sandbox"].append(rate(isolated, args.runs))
            if args.pool:
                job = Job(files={"tiny.py": PROGRAM}, language="python", entry="tiny.py", limits=limits)
                started = time.perf_counter()
                results = run_many([job] * args.runs, backend=backend)
                assert all(r.stdout == EXPECTED for r in results)
                rates["bwrap run_many"].append(args.runs / (time.perf_counter() - started))

    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{'mode':<18}{'exec/s (median)':>16}{'ms/exec':>10}   rounds of {args.runs}")
    for name, value in medians.items():
        print(f"{name:<18}{value:>16.1f}{1000 / value:>10.1f}")
    ratio = medians["bare subprocess"] / medians["bwrap sandbox"]
    print(f"isolation cost: bwrap is {ratio:.2f}x slower per execution than a bare subprocess")


if __name__ == "__main__":
    main()
