"""Output tokens/s of the hf engine on the embedded model: batched vs one prompt at a time.

    .venv/bin/python benchmarks/engine_throughput.py [--prompts 16] [--max-tokens 64] [--repeats 3]

Both modes run in this process on the same prompts and sampling; the script prints the median
tokens/s of each over the repeats and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from synth.engines.base import Request, SamplingParams
from synth.engines.hf import HFEngine

SEEDS = Path(__file__).resolve().parents[1] / "pipelines" / "data" / "general_seeds.jsonl"


def tokens_per_s(engine: HFEngine, requests: list[Request], sampling: SamplingParams, batched: bool) -> float:
    start = time.perf_counter()
    if batched:
        outs = engine.generate(requests, sampling)
    else:
        outs = [engine.generate([r], sampling)[0] for r in requests]
    elapsed = time.perf_counter() - start
    return sum(c.completion_tokens for comps in outs for c in comps) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    prompts = [json.loads(line)["prompt"] for line in SEEDS.read_text().splitlines()][: args.prompts]
    requests = [Request.chat(p) for p in prompts]
    # min_new_tokens is not exposed; greedy + a fixed budget keeps both modes decoding alike
    sampling = SamplingParams(n=1, temperature=args.temperature, max_tokens=args.max_tokens, seed=0)
    engine = HFEngine(dtype=args.dtype, batch_size=args.prompts)
    engine.generate(requests[:2], SamplingParams(n=1, temperature=0.0, max_tokens=4))  # warm-up
    results: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    for _ in range(args.repeats):
        results["batched"].append(tokens_per_s(engine, requests, sampling, batched=True))
        results["one_by_one"].append(tokens_per_s(engine, requests, sampling, batched=False))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"model={engine.model} dtype={engine.dtype} prompts={len(requests)} max_tokens={args.max_tokens}")
    for k, v in results.items():
        print(f"{k:>11}: median {med[k]:7.1f} output tok/s  (runs: {', '.join(f'{x:.1f}' for x in v)})")
    print(f"ratio batched / one-by-one: {med['batched'] / med['one_by_one']:.2f}x")


if __name__ == "__main__":
    main()
