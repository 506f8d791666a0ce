"""The data card (README.md): the YAML header the Hub reads and a report of the run.

The template is ``data_cards/dataset_card.md.j2``. What the card says about the exported rows is
gathered by :class:`CardFacts` one record at a time, so an export never needs its records in memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2
import yaml

from synth.export.rows import capability
from synth.export.schema import CONFIGS, SPLITS
from synth.records import PreferenceRecord, SFTRecord

CARD_TEMPLATE = "dataset_card.md.j2"
DEFAULT_LICENSE = "apache-2.0"

# Hub size buckets: (exclusive upper bound, label).
_SIZE_BUCKETS: tuple[tuple[float, str], ...] = (
    (1e3, "n<1K"),
    (1e4, "1K<n<10K"),
    (1e5, "10K<n<100K"),
    (1e6, "100K<n<1M"),
    (1e7, "1M<n<10M"),
    (1e8, "10M<n<100M"),
    (1e9, "100M<n<1B"),
    (1e10, "1B<n<10B"),
    (1e11, "10B<n<100B"),
    (1e12, "100B<n<1T"),
)


@dataclass
class RunSummary:
    """What the data card reports about the run that produced the records.

    ``funnel`` rows are dicts ``{stage, rows_in, kept, rejected, reasons: {reason: count}}``;
    ``score_stats`` maps a score name to ``{min, median, mean, max}`` over the whole run.
    Models, engines, templates and seeds found in the exported records' provenance are added
    to the card on top of what is listed here.
    """

    name: str = "synth-run"
    funnel: list[dict[str, Any]] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)
    templates: dict[str, str] = field(default_factory=dict)  # name -> version
    sampling: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    round: int = 0
    score_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    quarantined: int = 0
    created: str | None = None  # ISO date; defaults to the export date
    license: str | None = None  # the card's license when the export names none
    # per stage and language: {stage, language, kept, rejected} (recipes that record languages)
    language_funnel: list[dict[str, Any]] = field(default_factory=list)
    data_sources: list[dict[str, Any]] = field(default_factory=list)  # {name, path, license}
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        """Build from a plain dict; keys that are not fields go into ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        extra = dict(known.pop("extra", {}) or {})
        extra.update({k: v for k, v in data.items() if k not in names})
        return cls(**known, extra=extra)

    @classmethod
    def coerce(cls, summary: RunSummary | Mapping[str, Any] | None) -> RunSummary:
        if summary is None:
            return cls()
        if isinstance(summary, RunSummary):
            return summary
        if isinstance(summary, Mapping):
            return cls.from_dict(summary)
        raise TypeError(f"summary must be a RunSummary or a dict, got {type(summary).__name__}")


class CardFacts:
    """What the card reports about the exported (kept) records, gathered one record at a time.

    Everything is a set or a running collection of distinct values except the scores: medians need
    every value, so each finite score is kept as one 8-byte float (an ``array``, not Python floats).
    """

    def __init__(self) -> None:
        self.capabilities: set[str] = set()
        # dicts as ordered sets: the card lists models and engines in the order rows brought them
        self.models: dict[str, None] = {}
        self.engines: dict[str, None] = {}
        self.templates: dict[str, str] = {}  # name -> version of its first row
        self.sampling: set[str] = set()  # distinct sampling parameters, as sorted-key JSON
        self.seeds: set[int] = set()
        self.rounds: set[int] = set()
        self.scores: dict[str, dict[str, array]] = {config: {} for config in CONFIGS}
        self.languages: dict[str, dict[str, int]] = {}  # language -> config -> rows (provenance.language)

    def add(self, config: str, record: SFTRecord | PreferenceRecord) -> None:
        cap = capability(record)
        if cap:
            self.capabilities.add(cap)
        for name, value in record.scores.items():
            if math.isfinite(value):
                self.scores.setdefault(config, {}).setdefault(name, array("d")).append(value)
        p = record.provenance
        if p is None:
            return
        if p.model:
            self.models.setdefault(p.model, None)
        if p.engine:
            self.engines.setdefault(p.engine, None)
        if p.template:
            self.templates.setdefault(p.template, p.template_version or "-")
        if p.sampling:
            self.sampling.add(json.dumps(p.sampling, sort_keys=True, default=str))
        if p.seed is not None:
            self.seeds.add(p.seed)
        self.rounds.add(p.round)
        if p.language:
            by_config = self.languages.setdefault(p.language, {})
            by_config[config] = by_config.get(config, 0) + 1

    def language_mix(self) -> list[dict[str, Any]]:
        """Rows per recorded language, most first: {language, name, rows, share, <config>: rows}."""
        total = sum(sum(c.values()) for c in self.languages.values())
        out = []
        for lang, by_config in sorted(self.languages.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
            rows = sum(by_config.values())
            out.append({"language": lang, "name": _language_name(lang), "rows": rows,
                        "share": rows / total, **by_config})  # fmt: skip
        return out

    def score_stats(self, config: str) -> dict[str, dict[str, float]]:
        """n/min/median/mean/max per score name over the config's exported rows."""
        return {
            name: {
                "n": len(xs),
                "min": min(xs),
                "median": statistics.median(xs),
                "mean": statistics.fmean(xs),
                "max": max(xs),
            }
            for name, xs in sorted(self.scores.get(config, {}).items())
        }


def size_category(n: int) -> str:
    for bound, label in _SIZE_BUCKETS:
        if n < bound:
            return label
    return "n>1T"


def _tag(text: str) -> str:
    return "-".join(text.strip().lower().replace("_", " ").split())


def _funnel_rows(funnel: Iterable[Mapping[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    rows = []
    for stage in funnel:
        kept = int(stage.get("kept", 0) or 0)
        rejected = stage.get("rejected")
        rows_in = stage.get("rows_in")
        if rows_in is None:
            rows_in = kept + int(rejected or 0)
        if rejected is None:
            rejected = int(rows_in) - kept
        reasons = sorted((dict(stage.get("reasons") or {})).items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
        shown = [f"{reason} ({int(count)})" for reason, count in reasons[:top]]
        if len(reasons) > top:
            rest = sum(int(c) for _, c in reasons[top:])
            shown.append(f"+{len(reasons) - top} more ({rest})")
        rows.append(
            {
                "stage": str(stage.get("stage", "?")),
                "rows_in": int(rows_in),
                "kept": kept,
                "rejected": int(rejected),
                "reasons": "; ".join(shown) if shown else "-",
            }
        )
    return rows


def _md_cell(value: Any) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _fmt_num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _short_list(values: Iterable[Any], limit: int = 20) -> str:
    vals = [str(v) for v in values]
    if not vals:
        return "-"
    if len(vals) > limit:
        return ", ".join(vals[:limit]) + f", ... ({len(vals) - limit} more)"
    return ", ".join(vals)


def _union(first: Iterable[Any], second: Iterable[Any]) -> list[Any]:
    seen: dict[Any, None] = {}
    for v in [*first, *second]:
        if v is not None and v != "":
            seen.setdefault(v, None)
    return list(seen)


def _card_header(
    counts: Mapping[str, Mapping[str, int]],
    capabilities: Iterable[str],
    license: str,
    language: str | Sequence[str],
    pretty_name: str,
) -> dict[str, Any]:
    total = sum(sum(c.values()) for c in counts.values())
    tags = ["synthetic"]
    if sum(counts["sft"].values()):
        tags.append("sft")
    if sum(counts["preference"].values()):
        tags += ["dpo", "preference"]
    if sum(counts.get("step_labels", {}).values()):
        tags += ["process-reward", "stepwise-supervision"]
    if sum(counts.get("sft_tools", {}).values()):
        tags += ["tool-calling", "function-calling"]
    tags = _union(tags, (_tag(c) for c in capabilities))
    return {
        "pretty_name": pretty_name,
        "license": license,
        "language": [language] if isinstance(language, str) else list(language),
        "task_categories": ["text-generation"],
        "size_categories": [size_category(total)],
        "tags": tags,
        "configs": [
            {"config_name": config, "data_files": _data_files(config, counts[config])} for config in counts
        ],
    }


def _data_files(config: str, counts: Mapping[str, int]) -> list[dict[str, str]]:
    """The card's split -> files mapping for one config; ``{split}-*`` matches every shard.

    ``datasets`` (<= 5.2, huggingface/datasets#8401) cannot materialise a 0-row split, and one
    listed empty split makes ``load_dataset`` fail for the whole config. So an empty split is
    left out of the mapping (its file is still written). A config with no rows at all lists every
    split: ``load_dataset(dir, config, streaming=True)`` and :func:`synth.export.load_export` read
    it as empty splits with the full schema.
    """
    splits = [s for s in SPLITS if counts.get(s, 0) > 0] or list(SPLITS)
    return [{"split": s, "path": f"{config}/{s}-*"} for s in splits]


def _template() -> jinja2.Template:
    text = (resources.files("data_cards") / CARD_TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # markdown, not HTML
    )
    env.filters["cell"] = _md_cell
    env.filters["num"] = _fmt_num
    return env.from_string(text)


def render_card(
    summary: RunSummary | Mapping[str, Any],
    facts: CardFacts,
    counts: Mapping[str, Mapping[str, int]],
    *,
    license: str | None = None,
    language: str | Sequence[str] = "en",
    pretty_name: str | None = None,
    repo_id: str | None = None,
    language_plot: str | None = None,
) -> str:
    """The README.md text for the exported (kept) records described by ``facts`` and ``counts``.

    The header's license is ``license``, else the summary's, else :data:`DEFAULT_LICENSE`. Rows that
    record their language make the header's languages and the card's language mix (a table, and the
    plot ``language_plot``, a file beside the card, when given).
    """
    s = RunSummary.coerce(summary)
    languages = facts.language_mix()
    if languages:
        language = [row["language"] for row in languages]
    license = license or s.license or DEFAULT_LICENSE
    pretty = pretty_name or f"synth: {s.name}"
    capabilities = sorted(facts.capabilities)

    templates = dict(s.templates)
    for name, version in facts.templates.items():
        templates.setdefault(name, version)
    sampling = [s.sampling] if s.sampling else [json.loads(d) for d in sorted(facts.sampling)]

    header = yaml.safe_dump(
        _card_header(counts, capabilities, license, language, pretty),
        sort_keys=False,
        allow_unicode=True,
    )
    return _template().render(
        header=header.rstrip("\n"),
        pretty_name=pretty,
        summary=s,
        counts=counts,
        configs=list(counts),
        splits=SPLITS,
        total=sum(sum(c.values()) for c in counts.values()),
        empty_splits=[f"`{c}/{sp}`" for c in counts for sp in SPLITS if not counts[c][sp]],
        capabilities=capabilities,
        models=_union(s.models, facts.models),
        engines=_union(s.engines, facts.engines),
        templates=templates,
        sampling=[json.dumps(x, indent=2, sort_keys=True, default=str) for x in sampling[:10]],
        sampling_more=max(0, len(sampling) - 10),
        seeds=_short_list(_union([s.seed], sorted(facts.seeds))),
        rounds=_short_list(_union([s.round], sorted(facts.rounds))),
        funnel=_funnel_rows(s.funnel),
        stats={config: facts.score_stats(config) for config in counts},
        run_stats=s.score_stats,
        created=s.created or datetime.now(UTC).date().isoformat(),
        load_path=repo_id or "REPO_OR_DIR",
        extra=json.dumps(s.extra, indent=2, sort_keys=True, default=str) if s.extra else "",
        languages=languages,
        language_plot=language_plot,
        language_funnel=_language_funnel(s.language_funnel),
        data_sources=s.data_sources,
    )


def _language_name(code: str) -> str:
    try:
        from synth.stages.language import language_name

        return language_name(code)
    except ValueError:
        return code


def _language_funnel(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The per-language funnel as a table: its languages, and per stage 'kept/rows' by language."""
    languages = sorted({str(r["language"]) for r in rows})
    stages: dict[str, dict[str, str]] = {}
    for r in rows:
        cell = f"{r['kept']}/{r['kept'] + r['rejected']}"
        stages.setdefault(str(r["stage"]), {})[str(r["language"])] = cell
    return {"languages": languages, "stages": stages}


LANGUAGE_PLOT = "language_mix.png"


def write_language_plot(facts: CardFacts, out_dir: Any) -> str | None:
    """A bar chart of the exported rows per language, by config, beside the card (``LANGUAGE_PLOT``);
    None (and no file) when no row records its language."""
    mix = facts.language_mix()
    if not mix:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row['name']} ({row['language']})" for row in mix][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(mix) + 1.2))
    left = [0] * len(mix)
    for config, color in zip(CONFIGS, ("tab:blue", "tab:orange"), strict=False):
        values = [row.get(config, 0) for row in mix][::-1]
        ax.barh(labels, values, left=left, color=color, label=config)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlim(0, max(left) * 1.35 or 1)  # room for the legend
    ax.set_xlabel("exported rows")
    ax.set_title("language mix")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(f"{out_dir}/{LANGUAGE_PLOT}", dpi=100)
    plt.close(fig)
    return LANGUAGE_PLOT
