"""What the pipeline keeps of the engine's speed: output tokens/s of ``synth run general``'s generation
stage against the raw engine, on the same prompts, sampling and engine instance.

    .venv/bin/python benchmarks/pipeline_overhead.py [--engine auto|hf|vllm] [--repeats 3]

The baseline is the raw engine: ``engine.generate`` on the shipped 24 general seeds (n=4, 128 new
tokens, temperature 0.7, top_p 0.9), in batches of ``--batch-size`` prompts. The pipeline is the
general recipe's generation stage as the recipe builds it (``open_run`` with the recipe's config: the
run's store and engine cache; ``run.source`` of the seed file; ``run.map`` of ``Respond`` with
``cfg.sampling()`` in batches of ``cfg.batch_size``): rows read from the store, prompts rendered,
the engine cache asked and filled, records parsed, stamped and committed batch by batch. Its time runs
from the seeds stage's end to the generation stage's end (``events.jsonl``); its tokens are the
``completion_tokens`` its rows record. Each repeat uses a new run directory (no cache hits). Prints the
median of each and their ratio (the pipeline should keep at least 0.95).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from synth.engines import get_engine, resolve_engine
from synth.engines.base import Request, SamplingParams

SEEDS = Path(__file__).resolve().parents[1] / "pipelines" / "data" / "general_seeds.jsonl"


def raw(engine, cfg, requests: list[Request]) -> float:
    sampling = cfg.sampling()
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(requests), cfg.batch_size):
        outs = engine.generate(requests[i : i + cfg.batch_size], sampling)
        tokens += sum(c.completion_tokens for comps in outs for c in comps)
    return tokens / (time.perf_counter() - start)


def pipeline(engine, cfg) -> float:
    from synth.io import read_seeds
    from synth.recipe import open_run
    from synth.recipes.general import CAPABILITY
    from synth.stages.generate import Respond

    run = open_run(cfg, "general", engine)
    try:
        seeds = run.source("seeds", read_seeds(cfg.seeds, CAPABILITY))
        respond = Respond(engine=run.engine, sampling=cfg.sampling(), capability=CAPABILITY, round=cfg.round)
        run.map(respond, seeds, batch_size=cfg.batch_size)
        tokens = run.store.query(
            "SELECT sum(CAST(json_extract(data, '$.meta.completion_tokens') AS BIGINT)) FROM records "
            "WHERE stage = 'generate'"
        )[0][0]
    finally:
        run.close()
    events = [json.loads(line) for line in run.events.read_text().splitlines()]
    t0 = next(e["t"] for e in events if e["event"] == "stage_done" and e.get("stage") == "seeds")
    t1 = next(e["t"] for e in events if e["event"] == "stage_done" and e.get("stage") == "generate")
    return int(tokens) / (t1 - t0)


def main() -> None:
    from synth.recipes.general import SHIPPED_SEEDS, GeneralConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="auto", choices=("auto", "hf", "vllm"))
    ap.add_argument("--batch-size", type=int, default=24, help="prompts per engine call (both sides)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    name = resolve_engine(args.engine)
    kwargs = {"max_model_len": 2048} if name == "vllm" else {"batch_size": 32}
    start = time.perf_counter()
    engine = get_engine(name, None, **kwargs)
    print(f"engine={name} started in {time.perf_counter() - start:.1f}s; batch_size={args.batch_size} "
          f"n={args.n} max_tokens={args.max_tokens} temperature=0.7 top_p=0.9", flush=True)  # fmt: skip
    requests = [
        Request.chat(json.loads(line)["prompt"]) for line in Path(SHIPPED_SEEDS).read_text().splitlines()
    ]
    engine.generate(requests[:2], SamplingParams(n=1, temperature=0.0, max_tokens=4))  # warm-up
    results: dict[str, list[float]] = {"raw engine": [], "pipeline": []}
    with tempfile.TemporaryDirectory(prefix="synth-overhead-") as tmp:
        for rep in range(args.repeats):
            cfg = GeneralConfig(out=str(Path(tmp) / f"run{rep}"), engine=name, k=args.n, seed=rep,
                                max_tokens=args.max_tokens, temperature=0.7, top_p=0.9,
                                batch_size=args.batch_size)  # fmt: skip
            if rep % 2:  # alternate which goes first
                results["pipeline"].append(pipeline(engine, cfg))
                results["raw engine"].append(raw(engine, cfg, requests))
            else:
                results["raw engine"].append(raw(engine, cfg, requests))
                results["pipeline"].append(pipeline(engine, cfg))
            print(f"repeat {rep}: raw {results['raw engine'][-1]:.1f} tok/s, pipeline "
                  f"{results['pipeline'][-1]:.1f} tok/s", flush=True)  # fmt: skip
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in results.items():
        print(f"{k:>11}: median {med[k]:7.1f} output tok/s  (runs: {', '.join(f'{x:.1f}' for x in v)})")
    print(f"ratio pipeline / raw engine (baseline): {med['pipeline'] / med['raw engine']:.3f}")
    if hasattr(engine, "close"):
        engine.close()


if __name__ == "__main__":  # vLLM starts its engine core in a spawned child: this guard is required
    main()
