"""The data card of a mix (``synth mix``): the proportions asked and achieved (a table and a plot),
each source's funnel, and the mix run's own funnel with every removal's reason.

``mix_report`` asks the mix run's store (aggregate queries, nothing loaded): rows available per
capability where the mix stage began, rows kept per capability after it, and the asked shares.
``export_mix`` writes the dataset (``export_dataset``) and adds the mix section to its card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synth.store import Store

_CAP = "coalesce(json_extract_string(data, '$.provenance.capability'), 'unknown')"


def mix_report(store: Store, mix_stage: str = "mix") -> dict[str, Any]:
    """Asked and achieved share, rows kept and rows available per capability."""
    config = store.get_meta("config") or {}
    proportions = {c: float(p) for c, p in (config.get("proportions") or {}).items() if float(p) > 0}
    norm = sum(proportions.values()) or 1.0
    counts = store.query(
        f"SELECT {_CAP} AS cap, count(*) FILTER (WHERE kept), count(*) FROM records WHERE stage = ? "
        "GROUP BY cap ORDER BY cap",
        [mix_stage],
    )
    kept_by = {cap: k for cap, k, _ in counts}
    available = {cap: n for cap, _, n in counts}
    total = sum(kept_by.values())
    caps = sorted(set(proportions) | set(available))
    return {
        "total": total,
        "asked_total": int(config.get("total") or 0),
        "capabilities": [
            {
                "capability": c,
                "asked": round(proportions.get(c, 0.0) / norm, 4),
                "achieved": round(kept_by.get(c, 0) / total, 4) if total else 0.0,
                "rows": kept_by.get(c, 0),
                "available": available.get(c, 0),
            }
            for c in caps
        ],
    }


def source_funnels(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Each source's own funnel (a run directory's stages; an exported dataset: its row count only)."""
    from synth.prompt_sources import is_run_dir

    out = []
    for src in config.get("sources") or []:
        path = Path(src["path"] if isinstance(src, dict) else src)
        entry: dict[str, Any] = {"path": str(path), "funnel": []}
        if is_run_dir(path):
            store = Store(path, read_only=True)
            try:
                entry["capability"] = store.get_meta("capability")
                entry["funnel"] = store.funnel()
            finally:
                store.close()
        out.append(entry)
    return out


def write_mix_plot(report: dict[str, Any], out_dir: Path) -> str | None:
    """mix.png beside the card: asked vs achieved share per capability (bars)."""
    caps = report["capabilities"]
    if not caps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["capability"] for c in caps]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names)), 3.2))
    ax.bar([x - 0.2 for x in xs], [100 * c["asked"] for c in caps], width=0.4, label="asked")
    ax.bar([x + 0.2 for x in xs], [100 * c["achieved"] for c in caps], width=0.4, label="achieved")
    ax.set_xticks(list(xs), names, rotation=20)
    ax.set_ylabel("% of the mix")
    ax.set_title(f"data mix: {report['total']} rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "mix.png", dpi=100)
    plt.close(fig)
    return "mix.png"


def contaminated_rows(store: Store) -> list[dict[str, Any]]:
    """The rows decontamination dropped: id, the held-out set and item, the overlap."""
    rows = store.query(
        "SELECT key, json_extract_string(data, '$.meta.contaminated_by') FROM records "
        "WHERE stage LIKE 'decontaminate%' AND NOT kept ORDER BY stage, seq"
    )
    return [{"id": key, **(json.loads(by) if by else {})} for key, by in rows]


def mix_section(report: dict[str, Any], sources: list[dict[str, Any]], funnel: list[dict[str, Any]],
                plot: str | None, contaminated: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    lines = ["", "## Data mix", ""]
    asked = report["asked_total"] or "the most that meet the proportions"
    lines.append(f"{report['total']} SFT rows (total asked: {asked}).")
    lines += ["", "| capability | asked | achieved | rows | rows available |", "|---|---|---|---|---|"]
    for c in report["capabilities"]:
        lines.append(f"| {c['capability']} | {100 * c['asked']:.2f}% | {100 * c['achieved']:.2f}% | "
                     f"{c['rows']} | {c['available']} |")  # fmt: skip
    if plot:
        lines += ["", f"![asked vs achieved share per capability]({plot})"]
    lines += ["", "### What each step removed", ""]
    lines += ["| stage | in | kept | removed | reasons |", "|---|---|---|---|---|"]
    for f in funnel:
        reasons = ", ".join(f"{r}: {n}" for r, n in list(f["reasons"].items())[:4])
        rows_in = f["rows_in"] if f["rows_in"] is not None else f["kept"] + f["rejected"]
        lines.append(f"| {f['stage']} | {rows_in} | {f['kept']} | {f['rejected']} | {reasons} |")
    if contaminated:
        lines += ["", "### Dropped by decontamination", "", "| row | held-out set | item | overlap |",
                  "|---|---|---|---|"]  # fmt: skip
        for c in contaminated:
            overlap = f"{c['overlap']:.2f}" if isinstance(c.get("overlap"), int | float) else "-"
            lines.append(f"| {c['id']} | {c.get('set', '-')} | {c.get('item', '-')} | {overlap} |")
    lines += ["", "### Sources", ""]
    for s in sources:
        cap = f" ({s['capability']})" if s.get("capability") else ""
        lines.append(f"- `{s['path']}`{cap}")
        for f in s["funnel"]:
            reasons = ", ".join(f"{r}: {n}" for r, n in list(f["reasons"].items())[:3])
            lines.append(f"  - {f['stage']}: {f['kept']} kept, {f['rejected']} removed"
                         + (f" ({reasons})" if reasons else ""))  # fmt: skip
        if not s["funnel"]:
            lines.append("  - an exported dataset: its own card shows its funnel")
    return "\n".join(lines) + "\n"


def export_mix(run_dir: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Export the finished mix run in ``run_dir`` to ``out`` with its card's mix section; returns the
    mix report (also written to ``out/mix.json``)."""
    from synth.export import export_dataset, run_id_of
    from synth.stats import iter_outputs, summarize

    store = Store(run_dir, read_only=True)
    try:
        summary = summarize(store)
        report = mix_report(store)
        funnel = store.funnel()
        contaminated = contaminated_rows(store)
        config = store.get_meta("config") or {}
        export_dataset(iter_outputs(store, "sft"), iter_outputs(store, "preference"), out, summary,
                       run_id=run_id_of(run_dir), overwrite=overwrite)  # fmt: skip
    finally:
        store.close()
    sources = source_funnels(config)
    plot = write_mix_plot(report, out)
    card = out / "README.md"
    section = mix_section(report, sources, funnel, plot, contaminated)
    card.write_text(card.read_text(encoding="utf-8") + section, encoding="utf-8")
    about = {**report, "sources": sources, "contaminated": contaminated}
    (out / "mix.json").write_text(json.dumps(about, indent=2, default=str) + "\n")
    return report
