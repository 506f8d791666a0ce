"""Export a run's kept records as a Hugging Face dataset (parquet + data card) and push it to the Hub.

Layout written by :func:`export_dataset`::

    out_dir/
      README.md                              data card (YAML header the Hub reads + run report)
      sft/train-00000-of-00001.parquet
      sft/test-00000-of-00001.parquet
      preference/train-00000-of-00001.parquet
      preference/test-00000-of-00001.parquet

``datasets.load_dataset(out_dir, "sft")`` / ``(out_dir, "preference")`` read it back (the card's
``configs:`` header maps each config to its files). The column schema is fixed by
:data:`SFT_SCHEMA` and :data:`PREFERENCE_SCHEMA`; the trainers consume exactly these columns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from synth.records import Message, PreferenceRecord, Provenance, SFTRecord

if TYPE_CHECKING:
    from datasets import DatasetDict
    from huggingface_hub import HfApi

log = logging.getLogger(__name__)

CONFIGS: tuple[str, ...] = ("sft", "preference")
SPLITS: tuple[str, ...] = ("train", "test")
CARD_TEMPLATE = "dataset_card.md.j2"
TOKEN_ENV_VARS: tuple[str, ...] = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)

SFT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("messages", MESSAGES_TYPE),
        pa.field("capability", pa.string()),
        pa.field("scores", pa.string()),  # JSON object name -> float
        pa.field("provenance", pa.string()),  # JSON of Provenance, or "{}"
    ]
)

PREFERENCE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("prompt", MESSAGES_TYPE),
        pa.field("chosen", MESSAGES_TYPE),  # one assistant message
        pa.field("rejected", MESSAGES_TYPE),  # one assistant message
        pa.field("edited", MESSAGES_TYPE),  # one assistant message, or [] when absent
        pa.field("strength", pa.string()),  # nullable
        pa.field("chosen_score", pa.float64()),  # nullable
        pa.field("rejected_score", pa.float64()),  # nullable
        pa.field("capability", pa.string()),
        pa.field("scores", pa.string()),
        pa.field("provenance", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {"sft": SFT_SCHEMA, "preference": PREFERENCE_SCHEMA}

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


class MissingTokenError(RuntimeError):
    """No Hugging Face token was given and none is set in the environment."""


# --------------------------------------------------------------------------- run summary


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


# --------------------------------------------------------------------------- rows


def _messages(messages: Iterable[Message]) -> list[dict[str, str]]:
    # Message.name (tool name) is not part of the exported schema.
    return [{"role": m.role, "content": m.content} for m in messages]


def _assistant(content: str | None) -> list[dict[str, str]]:
    return [] if content is None else [{"role": "assistant", "content": content}]


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _scores_json(scores: Mapping[str, float]) -> str:
    # Non-finite scores become null so the column is always valid JSON.
    return json.dumps({k: _finite(v) for k, v in sorted(scores.items())}, ensure_ascii=False)


def _provenance_json(p: Provenance | None) -> str:
    return "{}" if p is None else p.model_dump_json()


def _capability(record: SFTRecord | PreferenceRecord) -> str:
    if record.provenance is not None:
        return record.provenance.capability
    cap = record.meta.get("capability")
    return cap if isinstance(cap, str) else ""


def sft_row(record: SFTRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "messages": _messages(record.messages),
        "capability": _capability(record),
        "scores": _scores_json(record.scores),
        "provenance": _provenance_json(record.provenance),
    }


def preference_row(record: PreferenceRecord) -> dict[str, Any]:
    edited = record.by_label("edited")
    return {
        "id": record.id,
        "prompt": _messages(record.prompt),
        "chosen": _assistant(record.chosen.content),
        "rejected": _assistant(record.rejected.content),
        "edited": _assistant(edited.content if edited else None),
        "strength": record.strength,
        "chosen_score": _finite(record.chosen.score),
        "rejected_score": _finite(record.rejected.score),
        "capability": _capability(record),
        "scores": _scores_json(record.scores),
        "provenance": _provenance_json(record.provenance),
    }


# --------------------------------------------------------------------------- split


def split_fraction(record_id: str, seed: int = 0) -> float:
    """A stable number in [0, 1) from the record id and the seed."""
    digest = hashlib.sha256(f"{seed}\x00{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(ids: Sequence[str], test_fraction: float, seed: int = 0) -> list[str]:
    """``"train"``/``"test"`` per id: test when its hash falls below ``test_fraction``.

    Depends only on (id, seed), not on order. When there are >= 2 ids and
    0 < test_fraction < 1, at least one lands in each split (the lowest hash is moved to test,
    or the highest to train).
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    keys = [split_fraction(i, seed) for i in ids]
    out = ["test" if k < test_fraction else "train" for k in keys]
    if len(ids) >= 2 and 0.0 < test_fraction < 1.0:
        order = sorted(range(len(ids)), key=lambda j: (keys[j], j))
        if "test" not in out:
            out[order[0]] = "test"
        elif "train" not in out:
            out[order[-1]] = "train"
    return out


# --------------------------------------------------------------------------- card helpers


def size_category(n: int) -> str:
    for bound, label in _SIZE_BUCKETS:
        if n < bound:
            return label
    return "n>1T"


def _tag(text: str) -> str:
    return "-".join(text.strip().lower().replace("_", " ").split())


def describe(values: Iterable[float]) -> dict[str, float] | None:
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    return {
        "n": len(xs),
        "min": min(xs),
        "median": statistics.median(xs),
        "mean": statistics.fmean(xs),
        "max": max(xs),
    }


def score_stats(records: Iterable[SFTRecord | PreferenceRecord]) -> dict[str, dict[str, float]]:
    """min/median/mean/max (and n) per score name over ``records``."""
    by_name: dict[str, list[float]] = {}
    for r in records:
        for name, value in r.scores.items():
            by_name.setdefault(name, []).append(value)
    out = {}
    for name in sorted(by_name):
        stats = describe(by_name[name])
        if stats is not None:
            out[name] = stats
    return out


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
    tags = _union(tags, (_tag(c) for c in capabilities))
    return {
        "pretty_name": pretty_name,
        "license": license,
        "language": [language] if isinstance(language, str) else list(language),
        "task_categories": ["text-generation"],
        "size_categories": [size_category(total)],
        "tags": tags,
        "configs": [
            {"config_name": config, "data_files": _data_files(config, counts[config])} for config in CONFIGS
        ],
    }


def _data_files(config: str, counts: Mapping[str, int]) -> list[dict[str, str]]:
    """The card's split -> files mapping for one config.

    ``datasets`` (<= 5.2, huggingface/datasets#8401) cannot materialise a 0-row split, and one
    listed empty split makes ``load_dataset`` fail for the whole config. So an empty split is
    left out of the mapping (its file is still written). A config with no rows at all lists every
    split: ``load_dataset(dir, config, streaming=True)`` and :func:`load_export` read it as empty
    splits with the full schema.
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
    sft: Sequence[SFTRecord],
    preference: Sequence[PreferenceRecord],
    counts: Mapping[str, Mapping[str, int]],
    *,
    license: str = "apache-2.0",
    language: str | Sequence[str] = "en",
    pretty_name: str | None = None,
    repo_id: str | None = None,
) -> str:
    """The README.md text for the exported (kept) records."""
    s = RunSummary.coerce(summary)
    records: list[SFTRecord | PreferenceRecord] = [*sft, *preference]
    provs = [r.provenance for r in records if r.provenance is not None]
    capabilities = sorted({c for c in (_capability(r) for r in records) if c})
    pretty = pretty_name or f"synth: {s.name}"

    templates = dict(s.templates)
    for p in provs:
        if p.template and p.template not in templates:
            templates[p.template] = p.template_version or "-"
    sampling = [s.sampling] if s.sampling else []
    if not sampling:
        distinct = {json.dumps(p.sampling, sort_keys=True, default=str) for p in provs if p.sampling}
        sampling = [json.loads(d) for d in sorted(distinct)]

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
        configs=CONFIGS,
        splits=SPLITS,
        total=sum(sum(c.values()) for c in counts.values()),
        empty_splits=[f"`{c}/{sp}`" for c in CONFIGS for sp in SPLITS if not counts[c][sp]],
        capabilities=capabilities,
        models=_union(s.models, (p.model for p in provs)),
        engines=_union(s.engines, (p.engine for p in provs)),
        templates=templates,
        sampling=[json.dumps(x, indent=2, sort_keys=True, default=str) for x in sampling[:10]],
        sampling_more=max(0, len(sampling) - 10),
        seeds=_short_list(_union([s.seed], sorted({p.seed for p in provs if p.seed is not None}))),
        rounds=_short_list(_union([s.round], sorted({p.round for p in provs}))),
        funnel=_funnel_rows(s.funnel),
        stats={"sft": score_stats(sft), "preference": score_stats(preference)},
        run_stats=s.score_stats,
        created=s.created or datetime.now(UTC).date().isoformat(),
        load_path=repo_id or "REPO_OR_DIR",
        extra=json.dumps(s.extra, indent=2, sort_keys=True, default=str) if s.extra else "",
    )


# --------------------------------------------------------------------------- export


def _write_parquet(rows: list[dict[str, Any]], schema: pa.Schema, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # An empty table is written with no row group at all: `datasets` cannot read a 0-row row
    # group (it derives its batch size from the first row group), but reads the schema alone.
    with pq.ParquetWriter(tmp, schema) as writer:
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    tmp.replace(path)


def export_dataset(
    sft: list[SFTRecord],
    preference: list[PreferenceRecord],
    out_dir: Path,
    summary: RunSummary | dict,
    test_fraction: float = 0.1,
    seed: int = 0,
    *,
    license: str = "apache-2.0",
    language: str | Sequence[str] = "en",
    pretty_name: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write the kept records as a HF dataset folder (configs sft/preference, splits train/test).

    Only records whose every verdict kept them are written. Every config/split file is written,
    empty ones included, with the fixed schema. Returns ``out_dir``.
    """
    for r in sft:
        if not isinstance(r, SFTRecord):
            raise TypeError(f"sft list holds a {type(r).__name__} (id={getattr(r, 'id', '?')})")
    for r in preference:
        if not isinstance(r, PreferenceRecord):
            raise TypeError(f"preference list holds a {type(r).__name__} (id={getattr(r, 'id', '?')})")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")

    out_dir = Path(out_dir)
    kept: dict[str, list[Any]] = {
        "sft": [r for r in sft if r.kept],
        "preference": [r for r in preference if r.kept],
    }
    to_row = {"sft": sft_row, "preference": preference_row}
    counts: dict[str, dict[str, int]] = {}
    for config in CONFIGS:
        records = kept[config]
        where = assign_splits([r.id for r in records], test_fraction, seed)
        config_dir = out_dir / config
        config_dir.mkdir(parents=True, exist_ok=True)
        # Stale shards would be picked up by the card's path globs.
        for split in SPLITS:
            for old in config_dir.glob(f"{split}-*.parquet"):
                old.unlink()
        counts[config] = {}
        for split in SPLITS:
            rows = [to_row[config](r) for r, w in zip(records, where, strict=True) if w == split]
            _write_parquet(rows, SCHEMAS[config], config_dir / f"{split}-00000-of-00001.parquet")
            counts[config][split] = len(rows)

    card = render_card(
        summary,
        kept["sft"],
        kept["preference"],
        counts,
        license=license,
        language=language,
        pretty_name=pretty_name,
        repo_id=repo_id,
    )
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    dropped = len(sft) + len(preference) - sum(len(v) for v in kept.values())
    log.info(
        "exported %s to %s (%d rejected records left out)",
        ", ".join(f"{c}: {counts[c]['train']} train / {counts[c]['test']} test" for c in CONFIGS),
        out_dir,
        dropped,
    )
    return out_dir


def load_export(dataset_dir: Path, config: str) -> DatasetDict:
    """Read one config of an exported folder back, every split included (empty ones too).

    ``datasets.load_dataset(dataset_dir, config)`` is the usual way and works whenever the
    config has rows; this also returns empty splits, with the exported schema.
    """
    from datasets import Dataset, DatasetDict

    if config not in SCHEMAS:
        raise ValueError(f"unknown config {config!r}; expected one of {CONFIGS}")
    out = {}
    for split in SPLITS:
        files = sorted((Path(dataset_dir) / config).glob(f"{split}-*.parquet"))
        if not files:
            raise FileNotFoundError(f"no {config}/{split}-*.parquet under {dataset_dir}")
        table = pa.concat_tables(pq.read_table(f, schema=SCHEMAS[config]) for f in files)
        out[split] = Dataset(table)
    return DatasetDict(out)


# --------------------------------------------------------------------------- hub


def resolve_token(token: str | None = None) -> str:
    """The token argument, else $HF_TOKEN, else $HUGGING_FACE_HUB_TOKEN."""
    if token:
        return token
    for var in TOKEN_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    raise MissingTokenError(
        "no Hugging Face token: pass token=... or set HF_TOKEN (or HUGGING_FACE_HUB_TOKEN) "
        "to a token with write access (https://huggingface.co/settings/tokens)"
    )


def push_to_hub(
    dataset_dir: Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    api: HfApi | None = None,
) -> str:
    """Create the dataset repo (if needed) and upload ``dataset_dir`` to it. Returns the URL.

    The token comes from ``token`` or the environment and is passed to the API calls only; it
    is never logged nor written anywhere.
    """
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "README.md").is_file():
        raise FileNotFoundError(f"{dataset_dir} is not an exported dataset (no README.md)")
    if not repo_id or repo_id.count("/") > 1 or repo_id.startswith("/") or repo_id.endswith("/"):
        raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}")
    resolved = resolve_token(token)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=resolved)

    log.info("creating dataset repo %s (private=%s)", repo_id, private)
    repo_url = api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private, token=resolved)
    log.info("uploading %s to %s", dataset_dir, repo_id)
    api.upload_folder(
        folder_path=str(dataset_dir),
        repo_id=repo_id,
        repo_type="dataset",
        token=resolved,
        commit_message="Upload synthetic dataset exported by synth",
        ignore_patterns=["*.tmp", ".cache/**"],
    )
    if isinstance(repo_url, str) and repo_url:
        url = str(repo_url)
    else:
        endpoint = getattr(api, "endpoint", None) or "https://huggingface.co"
        url = f"{endpoint.rstrip('/')}/datasets/{repo_id}"
    log.info("pushed dataset to %s", url)
    return url
