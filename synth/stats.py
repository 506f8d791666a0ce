"""A run's funnel and score distributions, read from its store (for `synth stats` and the data card).

Everything here is an aggregate query over the store (DuckDB reads the JSON rows itself), so a run of
millions of rows summarises in seconds and in little memory; only the output rows an export writes are
streamed, never loaded.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterator
from typing import Any

from synth.records import Record
from synth.store import Store

KINDS = ("sft", "preference")


def output_stages(store: Store, kind: str) -> list[str]:
    """The stages a run declared as its output of ``kind`` (runs before recipes named one stage)."""
    declared = (store.get_meta("outputs") or {}).get(kind) or []
    return [declared] if isinstance(declared, str) else list(declared)


def iter_outputs(store: Store, kind: str) -> Iterator[Record]:
    """The run's final rows of ``kind``, kept ones, stage by stage as declared (streamed)."""
    stages = output_stages(store, kind)
    if stages:
        yield from store.iter_records(stages, kept=True)


def output_records(store: Store) -> tuple[list[Record], list[Record]]:
    """The run's final (sft, preference) rows as lists (small runs and tests; exports stream)."""
    return list(iter_outputs(store, "sft")), list(iter_outputs(store, "preference"))


def score_values(store: Store) -> dict[str, list[float]]:
    """Every score written by any stage, for distributions and plots (last write per row wins)."""
    rows = store.query(
        "SELECT name, v FROM (SELECT r.key, j.key AS name, TRY_CAST(j.value AS DOUBLE) AS v, "
        "s.position, r.seq FROM records r JOIN stages s USING (stage), json_each(r.data, '$.scores') j) "
        "WHERE v IS NOT NULL "
        "QUALIFY row_number() OVER (PARTITION BY key, name ORDER BY position DESC, seq DESC) = 1 "
        "ORDER BY name, key"
    )
    out: dict[str, list[float]] = {}
    for name, v in rows:
        out.setdefault(name, []).append(v)
    return out


def _provenance_facts(store: Store) -> tuple[list[str], list[str], dict[str, str], dict[str, Any]]:
    stages = [s for kind in KINDS for s in output_stages(store, kind)]
    if not stages:
        return [], [], {}, {}
    base = "FROM records WHERE stage IN (SELECT unnest(?)) AND kept"
    facts = store.query(
        "SELECT list(DISTINCT json_extract_string(data, '$.provenance.model')), "
        "list(DISTINCT json_extract_string(data, '$.provenance.engine')) " + base,
        [stages],
    )[0]
    templates = store.query(
        "SELECT DISTINCT json_extract_string(data, '$.provenance.template'), "
        "json_extract_string(data, '$.provenance.template_version') " + base + " ORDER BY 1, 2",
        [stages],
    )
    sampling = store.query(
        "SELECT json_extract(data, '$.provenance.sampling') " + base + " "
        "AND json_extract(data, '$.provenance.sampling') IS NOT NULL LIMIT 1",
        [stages],
    )
    models = sorted(m for m in facts[0] or [] if m)
    engines = sorted(e for e in facts[1] or [] if e)
    return (
        models,
        engines,
        {t: v or "" for t, v in templates if t},
        json.loads(sampling[0][0]) if sampling else {},
    )


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
    models, engines, templates, sampling = _provenance_facts(store)
    values = score_values(store) if values is None else values
    counts = {kind: sum(store.count(s, kept=True) for s in output_stages(store, kind)) for kind in KINDS}
    return {
        "name": store.run_dir.name,
        "capability": store.get_meta("capability"),
        "recipe": config.get("recipe"),
        "funnel": funnel,
        "models": models or ([config.get("model") or "SmolLM2-135M-Instruct"] if config else []),
        "engines": engines or ([config.get("engine")] if config else []),
        "templates": templates,
        "sampling": sampling,
        "seed": config.get("seed"),
        "round": config.get("round", 0),
        "score_stats": {n: score_stats_from_values(v) for n, v in sorted(values.items()) if v},
        "quarantined": len(quarantined),
        "quarantine": quarantined,
        "rows": counts,
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
