"""Peak memory of `synth run general` against a local OpenAI-compatible server that answers at once,
for growing numbers of prompts: it must not grow with the run (stages stream from the store).

The server is the test suite's loopback server (tests/openai_server.py) in its own process, answering
with the deterministic stand-in of benchmarks/store_scale.py (judge prompts get "Score: N"), so every
stage runs. Each run is a fresh `synth run general --engine openai` process, measured by /usr/bin/time.

    .venv/bin/python benchmarks/openai_scale.py --prompts 2000,6000,20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = (
    "import sys, time; sys.path[:0] = [{tests!r}, {bench!r}]\n"
    "from openai_server import OpenAIServer\nfrom store_scale import InstantEngine\n"
    "srv = OpenAIServer(engine=InstantEngine()); print(srv.start(), flush=True); time.sleep(1e9)\n"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", default="2000,6000,20000")
    ap.add_argument("--k", type=int, default=2)
    args = ap.parse_args()
    code = SERVER.format(tests=str(ROOT / "tests"), bench=str(ROOT / "benchmarks"))
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        print(f"server: {url}")
        print(f"{'prompts':>8}{'seconds':>10}{'prompts/s':>11}{'peak RSS MB':>13}")
        rss = []
        for n in [int(x) for x in args.prompts.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                seeds = Path(tmp) / "seeds.jsonl"
                seeds.write_text(
                    "".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}?"}) + "\n" for i in range(n))
                )
                cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "pipelines.cli", "run", "general",
                       "--seeds", str(seeds), "--out", f"{tmp}/run", "--k", str(args.k), "--engine", "openai",
                       "--model", "fake", "--base-url", url, "--batch-size", "64"]  # fmt: skip
                start = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                      env={**os.environ, "SYNTH_NO_PROGRESS": "1"})  # fmt: skip
                seconds = time.perf_counter() - start
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-2000:])
                peak = int(proc.stderr.strip().splitlines()[-1]) / 1024
                rss.append(peak)
                print(f"{n:>8}{seconds:>10.1f}{n / seconds:>11.0f}{peak:>13.0f}")
        print(f"peak RSS, largest run / smallest run: {rss[-1] / rss[0]:.2f}")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
