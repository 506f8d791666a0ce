"""Output tokens/s of the hf engine as Ray replicas on a local Ray instance: 1 replica vs 2.

    .venv/bin/python benchmarks/ray_replicas.py [--prompts 16] [--batch 4] [--max-tokens 32] [--repeats 3]

Both set-ups get the whole machine: one replica with every CPU (as many torch threads), or two with
half each. The prompts go out in batches of ``--batch`` from 2 threads per replica, as a recipe's
batches in flight do (``run.overlap``), and each replica answers one call at a time. The script prints
the median tokens/s of each set-up over the repeats, how long the replicas took to load, and the ratio.

On a CPU machine both set-ups share the same cores: a second replica adds no compute, only a second
copy of the model, so the ratio stays near 1 (what it buys is that one replica's slow call no longer
holds the other's). Replicas pay off where each gets its own accelerator (one GPU per vLLM replica) or
its own machine (``--ray ADDRESS``): there the ratio approaches the number of replicas.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

from synth.engines.base import Request, SamplingParams
from synth.engines.ray import RayEngine

SEEDS = Path(__file__).resolve().parents[1] / "pipelines" / "data" / "general_seeds.jsonl"


def run_once(
    engine: RayEngine, batches: list[list[Request]], sampling: SamplingParams, threads: int
) -> float:
    """Tokens/s over all batches, ``threads`` callers taking batches from one queue."""
    todo = list(batches)
    lock = threading.Lock()
    tokens = [0]

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                batch = todo.pop(0)
            out = engine.generate(batch, sampling)
            with lock:
                tokens[0] += sum(c.completion_tokens for comps in out for c in comps)

    start = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return tokens[0] / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="prompts per call (a recipe's batch)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--cpus-per-replica", type=int, default=0, help="0: the machine's CPUs split between the replicas"
    )
    args = ap.parse_args()

    import ray

    cpus = os.cpu_count() or 1
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    prompts = [json.loads(line)["prompt"] for line in SEEDS.read_text().splitlines()][: args.prompts]
    requests = [Request.chat(p) for p in prompts]
    batches = [requests[i : i + args.batch] for i in range(0, len(requests), args.batch)]
    # greedy and a fixed budget: both set-ups decode the same tokens
    sampling = SamplingParams(n=1, temperature=0.0, max_tokens=args.max_tokens, seed=0)
    results: dict[int, list[float]] = {}
    load_s: dict[int, float] = {}
    each = {k: args.cpus_per_replica or max(1, cpus // k) for k in (1, 2)}
    for replicas in (1, 2):
        start = time.perf_counter()
        engine = RayEngine(
            "hf", None, replicas=replicas, engine_kwargs={"batch_size": args.batch},
            actor_options={"num_cpus": each[replicas]},
        )  # fmt: skip
        load_s[replicas] = time.perf_counter() - start
        engine.generate(batches[0][:2], SamplingParams(n=1, temperature=0.0, max_tokens=4))  # warm-up
        results[replicas] = [run_once(engine, batches, sampling, 2 * replicas) for _ in range(args.repeats)]
        engine.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"cpus={cpus} prompts={len(requests)} batch={args.batch} max_tokens={args.max_tokens}")
    for k, v in results.items():
        print(
            f"{k} replica(s), {each[k]} cpu(s) each: median {med[k]:7.1f} output tok/s "
            f"(runs: {', '.join(f'{x:.1f}' for x in v)}); replicas loaded in {load_s[k]:.1f} s"
        )
    print(f"ratio 2 replicas / 1: {med[2] / med[1]:.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
