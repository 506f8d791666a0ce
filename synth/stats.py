"""A run's funnel and score distributions, read from its store (for `synth stats` and the data card).

Everything here is an aggregate query over the store (DuckDB reads the JSON rows itself), so a run of
millions of rows summarises in seconds and in little memory; only the output rows an export writes are
streamed, never loaded.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synth.records import Record
from synth.stages.language import language_funnel
from synth.store import PROGRESS_NAME, Store

KINDS = ("sft", "preference")


def read_progress(run_dir: Path | str) -> dict[str, Any] | None:
    """The progress snapshot a running run writes after each committed batch (pid, command, funnel
    so far, quarantined count), or None when there is none."""
    try:
        return json.loads((Path(run_dir) / PROGRESS_NAME).read_text())
    except (OSError, ValueError):
        return None


def output_stages(store: Store, kind: str) -> list[str]:
    """The stages a run declared as its output of ``kind`` (runs before recipes named one stage)."""
    declared = (store.get_meta("outputs") or {}).get(kind) or []
    return [declared] if isinstance(declared, str) else list(declared)


def output_kinds(store: Store) -> list[str]:
    """The output kinds of a run: sft and preference, then any its recipe added (``step_labels``)."""
    declared = store.get_meta("outputs") or {}
    return [*KINDS, *(k for k in declared if k not in KINDS and k != "prompts")]


def iter_outputs(store: Store, kind: str) -> Iterator[Record]:
    """The run's final rows of ``kind``, kept ones, stage by stage as declared (streamed)."""
    stages = output_stages(store, kind)
    if stages:
        yield from store.iter_records(stages, kept=True)


_LATEST_SCORES = (
    "SELECT name, v FROM (SELECT r.key, j.key AS name, TRY_CAST(j.value AS DOUBLE) AS v, "
    "s.position, r.seq FROM records r JOIN stages s USING (stage), json_each(r.data, '$.scores') j) "
    "WHERE v IS NOT NULL AND isfinite(v) "
    "QUALIFY row_number() OVER (PARTITION BY key, name ORDER BY position DESC, seq DESC) = 1"
)


def score_tables(store: Store, bins: int = 10) -> dict[str, dict[str, Any]]:
    """Per score name (the last score each row got, over all stages): its statistics and a histogram
    of ``bins`` equal-width bins, both computed by DuckDB (no row is loaded into Python)."""
    with_scores = f"WITH _scores AS ({_LATEST_SCORES}) "
    stats = store.query(
        with_scores
        + "SELECT name, count(*), min(v), median(v), avg(v), max(v) FROM _scores GROUP BY name ORDER BY name"
    )
    out: dict[str, dict[str, Any]] = {}
    for name, n, lo, med, mean, hi in stats:
        out[name] = {
            "stats": {"n": n, "min": lo, "median": med, "mean": round(mean, 4), "max": hi},
            "bins": [(lo, hi, n)] if hi == lo else [],
        }
    rows = store.query(
        with_scores
        + "SELECT s.name, least(floor((s.v - m.lo) / (m.hi - m.lo) * ?)::INTEGER, ? - 1) AS b, count(*) "
        "FROM _scores s JOIN (SELECT name, min(v) AS lo, max(v) AS hi FROM _scores GROUP BY name) m "
        "USING (name) WHERE m.hi > m.lo GROUP BY ALL ORDER BY ALL",
        [bins, bins],
    )
    counts: dict[str, dict[int, int]] = {}
    for name, b, n in rows:
        counts.setdefault(name, {})[b] = n
    for name, per_bin in counts.items():
        st = out[name]["stats"]
        step = (st["max"] - st["min"]) / bins
        out[name]["bins"] = [
            (st["min"] + i * step, st["min"] + (i + 1) * step, per_bin.get(i, 0)) for i in range(bins)
        ]
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


def summarize(store: Store, scores: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything a data card or `synth stats` shows about a run (``scores``: score_tables(store),
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
    scores = score_tables(store) if scores is None else scores
    kinds = output_kinds(store)
    counts = {kind: sum(store.count(s, kept=True) for s in output_stages(store, kind)) for kind in kinds}
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
        "score_stats": {name: table["stats"] for name, table in scores.items()},
        "quarantined": len(quarantined),
        "quarantine": quarantined,
        "rows": counts,
        "engine_cache_entries": store.cache_size(),
        "language_funnel": language_funnel(store),  # [] unless the recipe records languages
        "data_sources": store.get_meta("data_sources") or [],  # input data the recipe names, with licences
        # kept rows per context-length bucket (the long-context recipe); the card lists it in its details
        **({"length_buckets": b} if (b := store.get_meta("length_buckets")) else {}),
    }


def histogram(bins: list[tuple[float, float, int]], width: int = 30) -> list[tuple[str, int, str]]:
    """Text histogram rows (label, count, bar) for a terminal, from ``score_tables`` bins."""
    top = max((n for _, _, n in bins), default=0) or 1
    if len(bins) == 1 and bins[0][0] == bins[0][1]:
        return [(f"{bins[0][0]:g}", bins[0][2], "#" * width)]
    return [(f"{lo:6.2f}-{hi:6.2f}", n, "#" * round(width * n / top)) for lo, hi, n in bins]


def plot_scores(store: Store, path: str, scores: dict[str, dict[str, Any]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = score_tables(store) if scores is None else scores
    funnel = store.funnel()
    n = len(scores) + 1
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
    for ax, (name, table) in zip(axes[1:], sorted(scores.items()), strict=True):
        bins = table["bins"]
        widths = [hi - lo or 0.1 for lo, hi, _ in bins]
        ax.bar(
            [lo for lo, _, _ in bins], [n for _, _, n in bins], width=widths, align="edge", color="tab:blue"
        )
        ax.set_title(f"score: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
