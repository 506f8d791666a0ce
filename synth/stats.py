"""A run's funnel and score distributions, read from its store (for `synth stats` and the data card)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from synth.records import Record
from synth.store import Store


def output_records(store: Store) -> tuple[list[Record], list[Record]]:
    """The run's final (sft, preference) rows, as the generator declared them."""
    outputs = store.get_meta("outputs", {})
    sft = store.records(outputs["sft"], kept=True) if outputs.get("sft") else []
    pref = store.records(outputs["preference"], kept=True) if outputs.get("preference") else []
    return sft, pref


def score_values(store: Store) -> dict[str, list[float]]:
    """Every score written by any stage, for distributions and plots (last write per row wins)."""
    latest: dict[tuple[str, str], float] = {}
    for r in store.records_in_run_order():
        for name, v in r.scores.items():
            latest[(r.id, name)] = v
    out: dict[str, list[float]] = {}
    for (_, name), v in latest.items():
        out.setdefault(name, []).append(v)
    return out


def summarize(store: Store, values: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """Everything a data card or `synth stats` shows about a run (``values``: score_values(store),
    when the caller has them already)."""
    config = store.get_meta("config", {})
    funnel = store.funnel()
    quarantined = store.quarantined()
    if quarantined:
        reasons = Counter(f"{q['field']}: {q['error']}" for q in quarantined)
        funnel.insert(
            0,
            {
                "stage": "validate (quarantine)",
                "rows_in": None,
                "kept": None,
                "rejected": len(quarantined),
                "reasons": dict(reasons.most_common()),
                "done": True,
            },
        )
    sft, pref = output_records(store)
    models, engines, templates, sampling = set(), set(), {}, {}
    for r in [*sft, *pref]:
        p = r.provenance
        if p is None:
            continue
        if p.model:
            models.add(p.model)
        if p.engine:
            engines.add(p.engine)
        if p.template:
            templates[p.template] = p.template_version or ""
        sampling = sampling or p.sampling
    values = score_values(store) if values is None else values
    return {
        "name": store.run_dir.name,
        "capability": store.get_meta("capability"),
        "funnel": funnel,
        "models": sorted(models) or ([config["model"] or "SmolLM2-135M-Instruct"] if config else []),
        "engines": sorted(engines) or ([config.get("engine")] if config else []),
        "templates": templates,
        "sampling": sampling,
        "seed": config.get("seed"),
        "round": config.get("round", 0),
        "score_stats": {n: score_stats_from_values(v) for n, v in sorted(values.items()) if v},
        "quarantined": len(quarantined),
        "quarantine": quarantined,
        "rows": {"sft": len(sft), "preference": len(pref)},
        "engine_cache_entries": store.cache_size(),
    }


def score_stats_from_values(vs: list[float]) -> dict[str, float]:
    return {
        "n": len(vs),
        "min": min(vs),
        "median": statistics.median(vs),
        "mean": round(statistics.fmean(vs), 4),
        "max": max(vs),
    }


def histogram(values: list[float], bins: int = 10, width: int = 30) -> list[tuple[str, int, str]]:
    """Text histogram rows (label, count, bar) for a terminal."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [(f"{lo:g}", len(values), "#" * width)]
    step = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / step), bins - 1)] += 1
    top = max(counts)
    return [
        (f"{lo + i * step:6.2f}-{lo + (i + 1) * step:6.2f}", c, "#" * round(width * c / top))
        for i, c in enumerate(counts)
    ]


def plot_scores(store: Store, path: str, values: dict[str, list[float]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = score_values(store) if values is None else values
    funnel = store.funnel()
    n = len(values) + 1
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6))
    axes = [axes] if n == 1 else list(axes)
    names = [f["stage"] for f in funnel]
    axes[0].barh(names[::-1], [f["kept"] for f in funnel][::-1], color="tab:green", label="kept")
    axes[0].barh(
        names[::-1],
        [f["rejected"] for f in funnel][::-1],
        left=[f["kept"] for f in funnel][::-1],
        color="tab:red",
        label="rejected",
    )
    axes[0].set_title("funnel")
    axes[0].legend()
    for ax, (name, vs) in zip(axes[1:], sorted(values.items()), strict=True):
        ax.hist(vs, bins=10, color="tab:blue")
        ax.set_title(f"score: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
