"""How the store and the stages scale: N seed prompts through the real `general` recipe (generate ->
clean -> judge -> best of K -> top fraction -> preference pairs) with an engine that answers at once.

The engine is a deterministic stand-in (replies are a hash of the prompt, the sample index and the
seed; the judge's "Score: N" likewise): this measures the store and the stages, not a model. Prints
rows/s per stage, peak RSS, the store's size on disk, and the ratio of our commit rate to writing the
same rows to parquet with pyarrow in the same process. The same command resumes a killed run.

    .venv/bin/python benchmarks/store_scale.py --prompts 1000000 --out /tmp/scale
    .venv/bin/python benchmarks/store_scale.py --prompts 20000 --out /tmp/scale --k 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth.engines.base import Completion  # noqa: E402

WORDS = [
    "the",
    "a",
    "model",
    "answer",
    "data",
    "round",
    "prompt",
    "reward",
    "score",
    "judge",
    "sample",
    "token",
    "chat",
    "code",
    "math",
]


class InstantEngine:
    """Answers every request at once, deterministically."""

    name = "instant"
    model = "instant-stand-in"

    def generate(self, requests, sampling):
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            judge = r.messages[0]["content"].startswith("You are a strict grader")
            comps = []
            for j in range(sampling.n):
                h = hashlib.blake2b(f"{text}|{j}|{sampling.seed}".encode(), digest_size=8).digest()
                if judge:
                    reply = f"Score: {1 + h[0] % 10}\nRationale: stand-in."
                else:
                    n = 40 + h[1] % 160  # a response of about 1 KB
                    reply = " ".join(WORDS[b % len(WORDS)] for b in (h * (n // 8 + 1))[:n]) + "."
                comps.append(Completion(reply, 10, len(reply) // 4, "stop"))
            out.append(comps)
        return out


def write_seeds(path: Path, n: int) -> None:
    if path.exists():
        with open(path) as fh:
            if sum(1 for _ in fh) == n:
                return
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(
                json.dumps({"id": f"p{i}", "prompt": f"Question number {i}: explain topic {i % 997}."}) + "\n"
            )


def parquet_baseline(store_dir: Path, stage: str, limit: int = 200_000) -> float:
    """Rows/s of pyarrow writing the same rows (as the store holds them) to parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.store import Store

    store = Store(store_dir, read_only=True)
    rows = store.query(
        "SELECT stage, key, seq, kind, kept, reason, data, grp FROM records WHERE stage = ? LIMIT ?",
        [stage, limit],
    )
    store.close()
    cols = list(zip(*rows, strict=True))
    names = ["stage", "key", "seq", "kind", "kept", "reason", "data", "grp"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        table = pa.table({n: list(c) for n, c in zip(names, cols, strict=True)})
        pq.write_table(table, Path(tmp) / "rows.parquet")
        seconds = time.perf_counter() - start
    return len(rows) / seconds


def commit_rate(n: int = 20_000, batch: int = 100) -> tuple[float, float]:
    """Store.commit_batch alone (records of about 1.5 KB, 100 a batch, one transaction each), and
    DuckDB inserting the same rows from Arrow with the same transactions, rows/s."""
    import pyarrow as pa

    from synth.records import SFTRecord
    from synth.store import Store

    text = " ".join(WORDS * 12)[:1400]
    rows = [
        SFTRecord(
            id=f"r{i}",
            messages=[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": text}],
        )
        for i in range(n)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        # one batch before the clock starts: the first Arrow conversion imports pandas (0.3 s once per
        # process), which is not the commit rate
        store.commit_batch("warm-up", "w", rows[:batch])
        start = time.perf_counter()
        for b in range(0, n, batch):
            store.commit_batch("bench", f"b{b}", rows[b : b + batch])
        ours = n / (time.perf_counter() - start)
        store.db.execute("CREATE TABLE raw AS SELECT * FROM records LIMIT 0")
        data = [r.to_json() for r in rows]
        start = time.perf_counter()
        for b in range(0, n, batch):
            keys = [f"r{i}" for i in range(b, b + batch)]
            cols = {"stage": ["raw"] * batch, "key": keys, "seq": list(range(b, b + batch))}
            cols |= {"kind": ["sft"] * batch, "kept": [True] * batch, "reason": pa.nulls(batch, pa.string())}
            chunk = pa.table({**cols, "data": data[b : b + batch], "grp": keys})
            store.db.execute("BEGIN TRANSACTION")
            store.db.from_arrow(chunk).insert_into("raw")
            store.db.execute("COMMIT")
        raw = n / (time.perf_counter() - start)
        store.close()
    return ours, raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--out", default="/tmp/synth-store-scale")
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    ap.add_argument("--commit-only", action="store_true", help="only the commit_batch measurement")
    args = ap.parse_args()
    ours, raw = commit_rate()
    print(
        f"Store.commit_batch, 20,000 rows of ~1.5 KB in 100-row transactions: {ours:,.0f} rows/s (DuckDB "
        f"inserting the same rows from Arrow, same transactions: {raw:,.0f} rows/s; ratio {ours / raw:.2f})"
    )
    if args.commit_only:
        return
    os.environ.setdefault("SYNTH_NO_PROGRESS", "1")

    from synth.recipe import run_recipe
    from synth.recipes.general import GeneralConfig

    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = out.parent / f"store-scale-seeds-{args.prompts}.jsonl"
    write_seeds(seeds, args.prompts)
    cfg = GeneralConfig(seeds=str(seeds), out=str(out / "run"), k=args.k, batch_size=args.batch_size,
                        max_tokens=64)  # fmt: skip
    start = time.perf_counter()
    run = run_recipe("general", cfg, engine=InstantEngine())
    total = time.perf_counter() - start
    funnel = run.store.funnel()
    run.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the baseline loads rows

    times = _stage_times(out / "run" / "events.jsonl")
    print(f"{args.prompts} prompts, k={args.k}: {total:.1f} s end to end (this process)")
    print(f"{'stage':<18}{'rows out':>12}{'seconds':>10}{'rows/s':>12}")
    committed = seconds = 0.0
    for f in funnel:
        n = f["kept"] + f["rejected"]
        s = times.get(f["stage"])
        committed += n
        seconds += s or 0
        rate = f"{n / s:,.0f}" if s else "-"
        print(f"{f['stage']:<18}{n:>12,}{(s or 0):>10.1f}{rate:>12}")
    size_mb = (out / "run" / "synth.duckdb").stat().st_size / 2**20
    ours = committed / seconds if seconds else float("nan")
    base = parquet_baseline(out / "run", "generate")
    print(f"rows committed: {committed:,.0f} in {seconds:.1f} s of stages = {ours:,.0f} rows/s")
    print(f"peak RSS of the run: {rss_mb:,.0f} MB; store on disk: {size_mb:,.0f} MB")
    print(f"pyarrow parquet write of the same rows: {base:,.0f} rows/s; ours / parquet = {ours / base:.3f}")


def _stage_times(events: Path) -> dict[str, float]:
    """Seconds per stage from the run's event log (first event of the stage to its stage_done)."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    prev = None
    for line in events.read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "run_start":
            prev = e["t"]
        if e["event"] in ("batch_committed", "stage_done"):
            first.setdefault(e["stage"], prev if prev is not None else e["t"])
            last[e["stage"]] = e["t"]
            prev = e["t"]
    return {s: last[s] - first[s] for s in last}


if __name__ == "__main__":
    main()
