"""Output tokens/s of the engines on the embedded model, on the demo's shape: the 24 shipped general
seeds, n=4 samples each, 128 new tokens, temperature 0.7, top_p 0.9 (one ``generate`` call for all).

    .venv/bin/python benchmarks/engine_throughput.py [--engine hf|vllm|both] [--repeats 3]

``--engine both`` (the default) times the hf engine (the baseline: what every run used before vLLM
ran on CPU) and the vllm engine on the same requests, back to back in this process, and prints the
median of each over the repeats and their ratio. With one engine, the baseline is that engine given
the prompts one at a time (n samples each call). Engine start-up is timed once and not counted in
tokens/s; a short warm-up call precedes the timed ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

from synth.engines import get_engine
from synth.engines.base import Request, SamplingParams

SEEDS = Path(__file__).resolve().parents[1] / "pipelines" / "data" / "general_seeds.jsonl"


def tokens_per_s(engine, requests: list[Request], sampling: SamplingParams, batched: bool = True) -> float:
    start = time.perf_counter()
    if batched:
        outs = engine.generate(requests, sampling)
    else:
        outs = [engine.generate([r], sampling)[0] for r in requests]
    elapsed = time.perf_counter() - start
    return sum(c.completion_tokens for comps in outs for c in comps) / elapsed


def build(name: str, args: argparse.Namespace):
    kwargs = {"batch_size": args.hf_batch_size} if name == "hf" else {"max_model_len": 2048}
    start = time.perf_counter()
    engine = get_engine(name, None, **kwargs)
    return engine, time.perf_counter() - start


def runs_of(engine, requests, sampling, repeats: int, batched: bool = True) -> list[float]:
    engine.generate(requests[:2], SamplingParams(n=1, temperature=0.0, max_tokens=4))  # warm-up
    return [tokens_per_s(engine, requests, sampling, batched) for _ in range(repeats)]


def show(label: str, runs: list[float]) -> float:
    med = statistics.median(runs)
    print(f"{label:>22}: median {med:7.1f} output tok/s  (runs: {', '.join(f'{x:.1f}' for x in runs)})")
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("hf", "vllm", "both"), default="both")
    ap.add_argument("--prompts", type=int, default=24, help="first N shipped seeds (24: all)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-batch-size", type=int, default=32, help="hf engine rows per batch (n counts)")
    args = ap.parse_args()

    prompts = [json.loads(line)["prompt"] for line in SEEDS.read_text().splitlines() if line.strip()]
    requests = [Request.chat(p) for p in prompts[: args.prompts]]
    sampling = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p,
                              max_tokens=args.max_tokens, seed=0)  # fmt: skip
    print(f"prompts={len(requests)} n={args.n} max_tokens={args.max_tokens} temperature={args.temperature} "
          f"top_p={args.top_p} repeats={args.repeats}")  # fmt: skip
    medians: dict[str, float] = {}
    names = ("hf", "vllm") if args.engine == "both" else (args.engine,)
    for name in names:
        engine, start_s = build(name, args)
        dtype = getattr(engine, "dtype", None) or getattr(engine, "llm_kwargs", {}).get("dtype")
        print(f"{name}: started in {start_s:.1f}s ({dtype})", flush=True)
        medians[name] = show(f"{name} batched", runs_of(engine, requests, sampling, args.repeats))
        if len(names) == 1:
            medians["one"] = show(f"{name} one at a time", runs_of(engine, requests, sampling, 1, False))
        if hasattr(engine, "close"):
            engine.close()
        del engine
        gc.collect()
    if len(names) == 2:
        print(f"ratio vllm / hf (baseline): {medians['vllm'] / medians['hf']:.2f}x")
    else:
        name = names[0]
        print(f"ratio {name} batched / one at a time (baseline): {medians[name] / medians['one']:.2f}x")


if __name__ == "__main__":  # vLLM starts its engine core in a spawned child: this guard is required
    main()
