"""`synth grade math` throughput: rows/s on a file of model-like solutions, end to end (interpreter,
worker start-up, extraction, math-verify under per-row timeouts, JSON out), against grading the same
rows one by one in one process. The rows are generated with a known verdict, so the script also
prints how many the grader got right.

    .venv/bin/python benchmarks/math_grade.py [--rows 5000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _gold_and_forms(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """A gold answer, ways a solution may state it, and wrong answers that look like it."""
    kind = rng.choice(["int", "int", "money", "decimal", "fraction", "percent", "big", "expr"])
    n = rng.randint(2, 999)
    if kind == "int":
        return str(n), [str(n), f"{n} apples", f"${n}$"], [str(-n), str(n + 1), f"{n}0"]
    if kind == "money":
        return f"{n}.5", [f"\\${n}.50", f"{n}.5 dollars", f"${n}.50"], [f"{n}.05", f"\\${n}"]
    if kind == "decimal":
        return f"{n / 4:g}", [f"{n / 4:g}", f"\\frac{{{n}}}{{4}}"], [f"{n / 4 + 1:g}", f"-{n / 4:g}"]
    if kind == "fraction":
        d = rng.randint(n + 1, 1000)
        return (
            f"\\frac{{{n}}}{{{d}}}",
            [f"\\frac{{{n}}}{{{d}}}", f"{n}/{d}", f"\\dfrac{{{2 * n}}}{{{2 * d}}}"],
            [
                f"\\frac{{{d}}}{{{n}}}",
                f"-\\frac{{{n}}}{{{d}}}",
            ],
        )
    if kind == "percent":
        p = rng.randint(1, 99)
        return f"{p}", [f"{p}\\%", f"{p}%", f"{p} percent"], [f"{p + 5}\\%", f"{p + 50}%"]
    if kind == "big":
        b = rng.randint(1000, 9_999_999)
        return str(b), [f"{b:,}", str(b), f"{b:,} dollars"], [f"{b + 1:,}", f"{b * 10:,}"]
    a, c = rng.randint(2, 9), rng.randint(1, 9)
    return f"{a}x + {c}", [f"{a}x+{c}", f"{c} + {a}x", f"y = {a}x + {c}"], [f"{a}x - {c}", f"{a + 1}x + {c}"]


def _solution(rng: random.Random, answer: str) -> str:
    lead = rng.choice(
        ["First we add the parts.", "Step 1: 3 * 4 = 12.\nStep 2: 12 + 5 = 17.", "We compute it."]
    )
    form = rng.choice(["boxed", "answer_is", "hashes", "a_colon", "last"])
    if form == "boxed":
        return f"{lead}\nThe answer is \\boxed{{{answer}}}."
    if form == "answer_is":
        return f"{lead}\nSo the final answer is {answer}."
    if form == "hashes":
        return f"{lead}\n#### {answer}"
    if form == "a_colon":
        return f"{lead}\nA: {answer}"
    plain = not any(ch.isalpha() or ch == "\\" for ch in answer)  # "the last number" finds it whole
    return f"{lead} That gives {answer}" if plain else f"{lead}\nThe answer is \\boxed{{{answer}}}."


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        gold, right, wrong = _gold_and_forms(rng)
        r = rng.random()
        if r < 0.05:
            rows.append(
                {"id": i, "answer": gold, "solution": "I am not sure how to solve this.", "expect": False}
            )
        elif r < 0.5:
            rows.append(
                {"id": i, "answer": gold, "solution": _solution(rng, rng.choice(right)), "expect": True}
            )
        else:
            rows.append(
                {"id": i, "answer": gold, "solution": _solution(rng, rng.choice(wrong)), "expect": False}
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-rows", type=int, default=1000, help="rows graded one by one, in-process")
    args = ap.parse_args()

    rows = make_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_text(
            "".join(json.dumps({k: r[k] for k in ("id", "answer", "solution")}) + "\n" for r in rows)
        )
        cmd = [
            sys.executable,
            "-m",
            "pipelines.cli",
            "grade",
            "math",
            str(path),
            "--workers",
            str(args.workers),
        ]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        wall = time.perf_counter() - start
    out = [json.loads(line) for line in done.stdout.splitlines()]
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    agree = sum(o["correct"] == r["expect"] for o, r in zip(out, rows, strict=True))

    from synth.stages.math.grading import grade

    sample = rows[: args.baseline_rows]
    t0 = time.perf_counter()
    for r in sample:
        grade(r["solution"], r["answer"])
    base = len(sample) / (time.perf_counter() - t0)

    found = f"{summary['correct']} graded correct, {summary['no_answer']} with no answer found"
    print(f"rows: {len(rows)} ({found}, {summary['timeout']} time-outs)")
    print(f"grader agrees with the known verdict on {agree}/{len(rows)} rows ({agree / len(rows):.2%})")
    alone = f"grading alone: {summary['rows_per_s']:,.0f} rows/s"
    speed = f"{wall:.1f} s, {len(rows) / wall:,.0f} rows/s"
    print(f"synth grade math, {args.workers} workers, end to end: {speed} ({alone})")
    print(f"baseline, one process, one row at a time (first {len(sample)} rows): {base:,.0f} rows/s")


if __name__ == "__main__":
    main()
