"""How deduplication scales (``synth.stages.dedup``): N generated rows with a known number of planted
near-duplicates, through the semantic dedup (all-MiniLM-L6-v2 embeddings, faiss k-means clusters,
greedy keep in rank order) and the MinHash near-exact index.

The rows are templated sentences over a vocabulary (20 to 60 words each, seeded); ``--planted`` of them
are copies of another row with one or two words replaced, or two neighbouring words swapped. Prints
the embedding time and the dedup time separately, peak RSS, the share of planted pairs found (one of
the two dropped, as a duplicate of the other) and the number of other rows dropped (false drops), for
the semantic pass (``nprobe`` 3, and 1: Llama 3's per-cluster rule) and for MinHash. The baseline, in
the same process: the same greedy rule by an exact all-pairs numpy matmul on a ``--baseline-rows``
subset, its time extrapolated to N (quadratic), against the clustered pass on the same subset (their
verdicts compared) and on all N rows.

``--calibrate`` instead prints the similarity distributions the module's ``DEFAULT_THRESHOLD`` was
chosen from: hand-written paraphrases and near copies of the shipped seeds vs unrelated seed pairs.

    nice .venv/bin/python benchmarks/dedup_scale.py --rows 100000 --planted 2000
    nice .venv/bin/python benchmarks/dedup_scale.py --rows 20000 --planted 400 --cache /tmp/emb.npy
    nice .venv/bin/python benchmarks/dedup_scale.py --calibrate
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synth.stages.dedup import (  # noqa: E402
    DEFAULT_NPROBE,
    DEFAULT_THRESHOLD,
    Embedder,
    MinHashIndex,
    default_clusters,
    rank_order,
    semantic_dedup,
    shingles,
)


def _words(text: str, sep: str | None = None) -> list[str]:
    return text.split(sep)


NOUNS = _words(
    "river mountain teacher engine garden violin market satellite bridge doctor harbor forest "
    "library kitchen museum pilot glacier orchard painter robot tractor village desert ocean camera "
    "planet bakery lantern compass anchor canyon castle meadow volcano island tunnel factory airport "
    "hospital stadium theater cathedral lighthouse windmill vineyard quarry prairie swamp reef comet "
    "telescope microscope battery circuit algorithm database server keyboard printer spreadsheet "
    "invoice contract budget salary mortgage pension tax auditor lawyer judge senator mayor soldier "
    "nurse farmer fisherman carpenter plumber tailor baker chemist biologist astronomer poet novelist "
    "sculptor dancer drummer guitarist tiger falcon dolphin beetle spider salmon elephant giraffe "
    "penguin wolf fox rabbit horse sheep goat cheese bread soup salad pepper tomato potato onion "
    "lemon mango cherry coffee tea honey sugar helmet jacket boot scarf glove umbrella wallet "
    "ticket passport suitcase bicycle motorcycle truck ferry subway rocket drone vaccine fever "
    "surgery patient therapy diet protein muscle skeleton brain heart lung kidney storm thunder "
    "rainbow frost drought flood earthquake tornado blizzard sunrise midnight winter summer autumn"
)
VERBS = _words(
    "repaired painted measured visited described ignored followed borrowed delivered protected "
    "examined designed cleaned counted defended explored photographed inspected launched managed "
    "organized polished rescued sketched tested translated watched welcomed carried celebrated "
    "compared decorated studied replaced sold bought packed opened closed mapped coded debugged "
    "audited cooked baked planted harvested trained fed chased hunted sang recorded filmed"
)
ADJS = _words(
    "ancient quiet bright heavy narrow golden broken modern gentle fragile rusty frozen noisy "
    "crowded empty wooden silver purple tiny enormous famous hidden wild careful clumsy brave "
    "lazy patient angry cheerful curious distant elegant fierce graceful humble loyal nervous "
    "proud rapid rough shiny smooth sour spicy sweet tender ugly vivid wealthy young old remote"
)
PLACES = _words(
    "near the coast|behind the old station|in the northern valley|under the city bridge|beside the "
    "frozen lake|at the edge of town|inside the main hall|across the wide river|on the top floor|"
    "during the long night|after the heavy rain|before the morning meeting|along the railway line|"
    "in a small workshop|at the central market|below the ancient walls",
    "|",
)
TEMPLATES = (
    "The {a} {n} {v} the {a} {n} {p}.",
    "A {a} {n} {v} every {n} {p}, and the {n} {v} it too.",
    "Yesterday the {n} {v} a {a} {n} {p}.",
    "Nobody {v} the {a} {n} until the {n} {v} the {n} {p}.",
    "Why had the {a} {n} {v} the {n} {p}?",
    "Each {n} {v} two {a} {n}s and one {n} {p}.",
)


def make_text(rng: random.Random) -> str:
    """A row: clauses from the templates until it has 20 to 60 words."""
    target = rng.randint(20, 60)
    out: list[str] = []
    while len(" ".join(out).split()) < target:
        out.append(
            rng.choice(TEMPLATES).format_map(_Pick(rng, {"n": NOUNS, "v": VERBS, "a": ADJS, "p": PLACES}))
        )
    return " ".join(" ".join(out).split()[:target])


class _Pick(dict):
    """``str.format_map`` helper: every ``{n}`` etc. draws a fresh word."""

    def __init__(self, rng: random.Random, pools: dict[str, list[str]]) -> None:
        super().__init__()
        self.rng, self.pools = rng, pools

    def __getitem__(self, key: str) -> str:
        return self.rng.choice(self.pools[key])

    def __contains__(self, key: object) -> bool:
        return True


def near_copy(text: str, rng: random.Random) -> str:
    """One or two words replaced by vocabulary words, or two neighbouring words swapped."""
    w = text.split()
    how = rng.randrange(3)
    if how == 2 and len(w) > 3:
        i = rng.randrange(len(w) - 1)
        w[i], w[i + 1] = w[i + 1], w[i]
    else:
        for i in rng.sample(range(len(w)), how + 1):
            w[i] = rng.choice(NOUNS + ADJS)
    return " ".join(w)


def make_rows(n: int, planted: int, seed: int) -> tuple[list[str], list[str], dict[int, int], list[float]]:
    """``n`` rows, of which ``planted`` are near copies of another row, inserted at random positions.
    Returns ids, texts, {copy's position: its original's position}, ranks (uniform)."""
    rng = random.Random(seed)
    originals = [make_text(rng) for _ in range(n - planted)]
    items: list[tuple[str, int | None]] = [(t, None) for t in originals]  # (text, original's number)
    for src in rng.sample(range(len(originals)), planted):
        items.insert(rng.randrange(len(items) + 1), (near_copy(originals[src], rng), src))
    position = [p for p, (_, src) in enumerate(items) if src is None]  # original number -> position
    texts = [t for t, _ in items]
    pairs = {p: position[src] for p, (_, src) in enumerate(items) if src is not None}
    ids = [f"r{i:07d}" for i in range(len(texts))]
    ranks = [rng.random() for _ in texts]
    return ids, texts, pairs, ranks


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score_semantic(
    ids: list[str], dropped: dict[str, tuple[str, float]], pairs: dict[int, int]
) -> tuple[int, int]:
    """(planted pairs found, other rows dropped)."""
    pos = {i: p for p, i in enumerate(ids)}
    partner: dict[int, int] = {}
    for c, o in pairs.items():
        partner[c] = o
        partner.setdefault(o, c)
    found = 0
    found_pairs = set()
    false = 0
    for rid, (dup, _) in dropped.items():
        a, b = pos[rid], pos[dup]
        pair = (a, b) if a in pairs and pairs[a] == b else (b, a) if b in pairs and pairs[b] == a else None
        if pair is None:
            false += 1
        elif pair not in found_pairs:
            found_pairs.add(pair)
            found += 1
    return found, false


def exact_greedy(x: np.ndarray, order: np.ndarray, threshold: float) -> set[int]:
    """The baseline: the same greedy rule over all pairs by one numpy matmul (quadratic)."""
    sims = x @ x.T
    kept: list[int] = []
    thr = np.float32(threshold)
    for i in order:
        if not kept or sims[i, kept].max() < thr:
            kept.append(int(i))
    return set(kept)


def bench(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    ids, texts, pairs, ranks = make_rows(args.rows, args.planted, args.seed)
    words = [len(t.split()) for t in texts]
    print(
        f"rows: {len(texts):,} ({min(words)}-{max(words)} words, mean {np.mean(words):.1f}), "
        f"planted near copies: {len(pairs):,}; generated in {time.perf_counter() - t0:.1f} s"
    )

    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        emb = np.load(cache)
        assert emb.shape == (len(texts), 384), f"{cache} holds {emb.shape}, not this input"
        print(f"embeddings: loaded from {cache} (not timed)")
    else:
        embedder = Embedder(batch_size=args.batch_size)
        t = time.perf_counter()
        embedder.encode(texts[:8])
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        chunks = []
        for start in range(0, len(texts), 4096):
            chunks.append(embedder.encode(texts[start : start + 4096]))
            done = start + len(chunks[-1])
            rate = done / (time.perf_counter() - t)
            print(f"  embedded {done:,}/{len(texts):,} ({rate:.0f} rows/s)", file=sys.stderr, flush=True)
        emb = np.concatenate(chunks)
        embed_s = time.perf_counter() - t
        print(
            f"embedding: {embed_s:.1f} s ({len(texts) / embed_s:.0f} rows/s; model load {load_s:.1f} s), "
            f"peak RSS {peak_rss_mb():.0f} MB"
        )
        if cache is not None:
            np.save(cache, emb)

    cp = np.array([c for c in pairs], dtype=np.int64)
    op = np.array([pairs[c] for c in pairs], dtype=np.int64)
    pair_sims = (emb[cp] * emb[op]).sum(1) if len(cp) else np.zeros(0)
    reachable = int((pair_sims >= np.float32(args.threshold)).sum())
    if len(cp):
        print(
            f"planted pairs' cosine: min {pair_sims.min():.3f}, median {np.median(pair_sims):.3f}; "
            f"{reachable} of {len(cp)} at or above the threshold {args.threshold} (the most a pass can find)"
        )
    k = default_clusters(len(texts))
    full_s = 0.0
    for nprobe in sorted({DEFAULT_NPROBE, *args.nprobe}):
        t = time.perf_counter()
        res = semantic_dedup(ids, emb, ranks, args.threshold, nprobe=nprobe, seed=args.seed)
        dedup_s = time.perf_counter() - t
        found, false = score_semantic(ids, res.dropped, pairs)
        if nprobe == DEFAULT_NPROBE:
            full_s = dedup_s
        print(
            f"semantic dedup (threshold {args.threshold}, {k} clusters, nprobe {nprobe}): {dedup_s:.1f} s, "
            f"kept {len(res.kept):,}, dropped {len(res.dropped):,}; planted found {found}/{len(pairs)} "
            f"({found / max(1, len(pairs)):.1%}), false drops {false}; peak RSS {peak_rss_mb():.0f} MB"
        )

    # baseline: the exact greedy rule by all-pairs matmul on a subset, extrapolated
    m = min(args.baseline_rows, len(texts))
    sub = np.sort(np.random.default_rng(args.seed).choice(len(texts), m, replace=False))
    sub_ids = [ids[i] for i in sub]
    sub_ranks = [ranks[i] for i in sub]
    xs = np.ascontiguousarray(emb[sub])
    t = time.perf_counter()
    exact = exact_greedy(xs, rank_order(sub_ids, sub_ranks), args.threshold)
    exact_s = time.perf_counter() - t
    t = time.perf_counter()
    clustered = semantic_dedup(sub_ids, xs, sub_ranks, args.threshold, seed=args.seed)
    clustered_s = time.perf_counter() - t
    kept_c = {sub_ids.index(i) for i in clustered.kept} if m <= 20000 else set()
    flat = semantic_dedup(sub_ids, xs, sub_ranks, args.threshold, clusters=1)
    kept_f = {sub_ids.index(i) for i in flat.kept} if m <= 20000 else set()
    extrapolated = exact_s * (len(texts) / m) ** 2
    print(
        f"baseline, exact all-pairs numpy greedy on {m:,} rows: {exact_s:.1f} s, kept {len(exact):,}; "
        f"clustered ({default_clusters(m)} clusters, nprobe {DEFAULT_NPROBE}) on the same rows: "
        f"{clustered_s:.2f} s, kept {len(clustered.kept):,}, verdicts differing from exact: "
        f"{len(exact ^ kept_c)}; one cluster (flat) vs exact: {len(exact ^ kept_f)} differ"
    )
    print(
        f"baseline extrapolated to {len(texts):,} rows: {extrapolated:.0f} s (x{(len(texts) / m) ** 2:.0f}) "
        f"vs clustered measured {full_s:.1f} s: ratio {extrapolated / full_s:.0f}x"
    )

    # MinHash, in stream order
    idx = MinHashIndex()
    t = time.perf_counter()
    flagged: dict[int, int] = {}
    pos = {i: p for p, i in enumerate(ids)}
    for p, (rid, text) in enumerate(zip(ids, texts, strict=True)):
        dup = idx.add_and_check(rid, text)
        if dup is not None:
            flagged[p] = pos[dup]
    mh_s = time.perf_counter() - t
    hit = sum(1 for c, o in pairs.items() if flagged.get(max(c, o)) == min(c, o))
    mh_false = sum(1 for a, b in flagged.items() if not (pairs.get(a) == b or pairs.get(b) == a))
    print(
        f"minhash (5-gram words, 128 perm, jaccard 0.8): {mh_s:.1f} s ({len(texts) / mh_s:.0f} rows/s), "
        f"flagged {len(flagged):,}; planted found {hit}/{len(pairs)} ({hit / max(1, len(pairs)):.1%}), "
        f"false {mh_false}; peak RSS {peak_rss_mb():.0f} MB"
    )
    jac = []
    for c, o in pairs.items():
        a, b = set(shingles(texts[c])), set(shingles(texts[o]))
        jac.append(len(a & b) / len(a | b))
    if jac:
        print(
            f"planted pairs' true 5-gram Jaccard: min {min(jac):.3f}, median {np.median(jac):.3f}; "
            f"{sum(j >= 0.8 for j in jac)} of {len(jac)} at or above 0.8 (what MinHash at 0.8 targets)"
        )
    exact_copies = sum(1 for c, o in pairs.items() if texts[c].lower().split() == texts[o].lower().split())
    print(f"(planted copies identical after normalisation: {exact_copies})")


# -- calibration ---------------------------------------------------------------------------------
PARAPHRASES = {
    "g000": "Write a Python function to add up all the numbers in a list.",
    "g001": "Briefly describe, in a couple of sentences, what a hash map is.",
    "g002": "Which city is Japan's capital?",
    "g003": "What are three pieces of advice for writing emails that are easy to understand?",
    "g004": "Explain the water cycle in simple terms a ten year old would understand.",
    "g005": "Compose a haiku on the falling leaves of autumn.",
    "g006": "What is the way to reverse a string using JavaScript?",
    "g007": "How does a Python list differ from a tuple?",
    "g008": "Recommend a quick, healthy breakfast I can prepare in five minutes.",
    "g009": "Describe in a single paragraph how photosynthesis works.",
    "g010": "Which colors are the primary colors?",
    "g011": "How do you say 'good morning' in Spanish and in French?",
    "g012": "Give me a SQL statement to count how many rows are in the users table.",
    "g013": "What makes the sky look blue?",
    "g014": "Share a brief inspirational quote and explain what it means.",
    "g015": "What does the acronym HTTP mean, and what is it used for?",
    "g016": "Name four of the planets in our solar system.",
    "g017": "Calculate how many minutes there are in three hours, showing your work.",
    "g018": "Describe what a cat is like to a person who has never seen a cat.",
    "g019": "Explain recursion and give a very small example.",
    "g020": "What are two advantages of exercising regularly?",
    "g021": "Write a courteous response turning down an invitation to a meeting.",
    "g022": "At sea level, what temperature in Celsius does water boil at?",
    "g023": "What is a unit test? Explain.",
}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def calibrate(args: argparse.Namespace) -> None:
    data = ROOT / "pipelines" / "data"
    seeds = _jsonl(data / "general_seeds.jsonl")
    prompts = [s["prompt"] for s in seeds]
    para = [PARAPHRASES[s["id"]] for s in seeds]
    near = []
    for p in prompts:  # one word dropped, and two neighbouring words swapped, mid-sentence
        w = p.split()
        mid = len(w) // 2
        near.append((p, " ".join(w[:mid] + w[mid + 1 :])))
        s = list(w)
        s[mid - 1], s[mid] = s[mid], s[mid - 1]
        near.append((p, " ".join(s)))
    pool = prompts + [r["problem"] for r in _jsonl(data / "math" / "problems.jsonl")]
    pool += [r["question"] for r in _jsonl(data / "factuality" / "probes.jsonl")]

    emb = Embedder()

    def enc(texts: list[str]) -> np.ndarray:
        return emb.encode([f"user: {t}" for t in texts])  # as conversation_text writes a prompt row

    def show(name: str, v: np.ndarray) -> None:
        q = np.percentile(v, [0, 1, 5, 25, 50, 75, 95, 99, 99.9, 100])
        print(
            f"{name} (n={len(v)}): "
            + ", ".join(
                f"p{p:g} {x:.3f}" for p, x in zip([0, 1, 5, 25, 50, 75, 95, 99, 99.9, 100], q, strict=True)
            )
        )
        for t in (0.8, 0.85, 0.9, 0.95):
            print(f"    >= {t}: {(v >= t).sum()}")

    pv = (enc(prompts) * enc(para)).sum(1)
    show("paraphrases", pv)
    for s, a, b in sorted(zip(pv, prompts, para, strict=True)):
        print(f"    {s:.3f}  {a}  ||  {b}")
    nv = (enc([a for a, _ in near]) * enc([b for _, b in near])).sum(1)
    show("near copies (a word dropped / two swapped)", nv)
    for s, (a, b) in sorted(zip(nv, near, strict=True))[:6]:
        print(f"    {s:.3f}  {a}  ||  {b}")
    ep = enc(pool)
    sims = ep @ ep.T
    iu = np.triu_indices(len(pool), 1)
    uv = sims[iu]
    show(f"unrelated pairs ({len(pool)} seed texts)", uv)
    for o in np.argsort(-uv)[:8]:
        print(f"    {uv[o]:.3f}  {pool[iu[0][o]]}  ||  {pool[iu[1][o]]}")
    print(f"DEFAULT_THRESHOLD = {DEFAULT_THRESHOLD}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--planted", type=int, default=2_000)
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    ap.add_argument("--baseline-rows", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=128, help="embedding batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--nprobe",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 8],
        help="clusters probed, besides the default (comma-separated)",
    )
    ap.add_argument("--cache", help="an .npy file: embeddings saved there, or loaded when it exists")
    ap.add_argument("--calibrate", action="store_true", help="print the threshold's measurements")
    args = ap.parse_args()
    if args.calibrate:
        calibrate(args)
    else:
        if not 0 <= args.planted < args.rows:
            ap.error("--planted must be in [0, --rows)")
        bench(args)


if __name__ == "__main__":
    main()
