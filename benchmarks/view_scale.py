"""How fast `synth view` answers over a big run: each page's query (synth.view.data, what the web API
calls) against the baseline of loading the stage it pages through (its rows read from the store, as
a viewer that loads a stage would), in the same process. Medians of ``--repeat`` runs.

    .venv/bin/python benchmarks/store_scale.py --prompts 1000000 --out /tmp/scale   # a 10.9M-row run
    .venv/bin/python benchmarks/view_scale.py --run /tmp/scale/run
    .venv/bin/python benchmarks/view_scale.py --rows 200000            # builds a two-stage run first
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth.records import Message, Provenance, SFTRecord  # noqa: E402
from synth.store import Store  # noqa: E402
from synth.view.data import RunReader  # noqa: E402


def build(run: Path, rows: int) -> None:
    store = Store(run)
    store.begin_stage("judge", rows)
    batch = []
    for i in range(rows):
        rec = SFTRecord(
            id=f"r{i}",
            messages=[
                Message(role="user", content=f"question {i} on topic {i % 997}: " + "words " * 40),
                Message(role="assistant", content=f"answer {i} " + "reply " * 120),
            ],  # fmt: skip
            provenance=Provenance(capability=("general", "code", "math")[i % 3], model="m", round=i % 2),
            scores={"judge": float(i % 11)},
        )
        if i % 11 < 3:
            rec.reject("judge", "low_score")
        elif i % 13 == 0:
            rec.reject("judge", "too_long")
        batch.append(rec)
        if len(batch) == 1000:
            store.commit_batch("judge", f"b{i}", batch)
            batch = []
    if batch:
        store.commit_batch("judge", "last", batch)
    store.end_stage("judge")
    store.close()


def timed(fn, repeat: int) -> tuple[float, float]:
    """(first call, median of the next ``repeat``) in seconds: a cached answer shows in the median."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="an existing run directory")
    ap.add_argument(
        "--rows", type=int, default=200_000, help="rows of the run to build when --run is not given"
    )
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    run = args.run
    if run is None:
        run = Path(tempfile.mkdtemp(prefix="view-scale-")) / "run"
        t = time.perf_counter()
        build(run, args.rows)
        print(f"built {args.rows:,} rows in {time.perf_counter() - t:.1f} s: {run}")
    reader = RunReader(run)
    funnel = reader.funnel()["funnel"]
    total = sum(f["kept"] + f["rejected"] for f in funnel)
    stage = max(funnel, key=lambda f: (f["rejected"], f["kept"]))
    name, n = stage["stage"], stage["kept"] + stage["rejected"]
    reason = next(iter(stage["reasons"]), None)
    key = reader.rows(name, offset=n // 2, limit=1)["rows"][0]["key"]
    score = (reader.facets(name)["scores"] or [None])[0]
    print(f"run: {run} ({total:,} rows in {len(funnel)} stages); paging stage {name!r}: {n:,} rows")

    store = Store(run, read_only=True)
    t = time.perf_counter()
    loaded = 0
    for _ in store.iter_rows(name):
        loaded += 1
    baseline = time.perf_counter() - t
    store.close()
    print(f"baseline: reading the stage's {loaded:,} rows from the store: {baseline:.2f} s")

    pages = {
        "funnel": lambda: reader.funnel(),
        "rows, first page of 50": lambda: reader.rows(name, limit=50),
        "rows, a page in the middle": lambda: reader.rows(name, offset=n // 2, limit=50),
        f"rows rejected as {reason!r}": lambda: reader.rows(name, kept=False, reason=reason, limit=50),
        "rows of one capability, score range": lambda: (
            reader.rows(name, capability="general", score=score, low=0, high=5, limit=50)
            if score
            else reader.rows(name, capability="general", limit=50)
        ),
        "one record with its trail": lambda: reader.record(name, key),
        "text search (a rare word)": lambda: reader.rows(name, q="zebra-not-there", limit=50),
        "facets (cached after the first)": lambda: reader.facets(name),
        "score histograms (cached after the first)": lambda: reader.scores(name),
    }
    print(f"{'page':44s} {'first s':>8s} {'median s':>9s} {'x baseline':>11s}")
    for label, fn in pages.items():
        first, median = timed(fn, args.repeat)
        print(f"{label:44s} {first:8.3f} {median:9.3f} {median / baseline:11.4f}")


if __name__ == "__main__":
    main()
