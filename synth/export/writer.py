"""Stream records into the dataset folder: parquet shards per config/split, then the data card.

Rows are converted and written a row group at a time, so an export of any size holds one row group
per split (plus one float per score for the card's medians), never its records. Shards are written
under ``.tmp`` names and take their final ``{split}-{i:05d}-of-{n:05d}.parquet`` names only once
every config is complete: until then the folder still holds the previous export. An export that
fails removes its ``.tmp`` files; one killed midway leaves them, and the next export clears them.

Each export records which run it came from in ``.synth-export.json`` (:data:`MANIFEST`), written
before anything else. An export goes only into a missing or empty folder, or one whose manifest names
the same run (a re-export, or the rerun of one that was killed); any other folder (a user's files, the
export of another run, one made before manifests) is refused unless ``overwrite`` is given, and even
then only ``README.md`` and the ``sft/`` and ``preference/`` shards are replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synth.export.card import CardFacts, RunSummary, render_card, write_language_plot
from synth.export.rows import RECORD_TYPES, ROW_BUILDERS
from synth.export.schema import CONFIGS, SCHEMAS, SPLITS
from synth.export.splits import Splitter
from synth.records import PreferenceRecord, SFTRecord

log = logging.getLogger(__name__)

DEFAULT_SHARD_ROWS = 100_000
# The export's manifest: which run the folder holds an export of.
MANIFEST = ".synth-export.json"
MANIFEST_FORMAT = "synth-export/1"
# Rows per parquet row group: the most rows of one split held in memory before they are written.
ROW_GROUP_ROWS = 2_000


def shard_name(split: str, index: int, count: int) -> str:
    """The Hub's shard naming, which ``datasets`` and the dataset viewer order by."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


class _ShardWriter:
    """One config/split: rows in, ``.tmp`` parquet shards of at most ``shard_rows`` rows out."""

    def __init__(self, directory: Path, split: str, schema: pa.Schema, shard_rows: int) -> None:
        self.directory = directory
        self.split = split
        self.schema = schema
        self.shard_rows = shard_rows
        self.rows = 0
        self.paths: list[Path] = []
        self._buffer: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        self.rows += 1
        # A row group never straddles two shards, so every shard but the last has shard_rows rows.
        if len(self._buffer) >= min(ROW_GROUP_ROWS, self.shard_rows - self._in_shard):
            self._flush()

    def close(self) -> list[Path]:
        """Write what is buffered and return the shards, in order.

        An empty split still gets one file, with the schema and no row group at all: ``datasets``
        cannot read a 0-row row group (it derives its batch size from the first one), but reads
        the schema alone.
        """
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self.paths:
            pq.ParquetWriter(self._next_path(), self.schema).close()
        return self.paths

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for path in self.paths:
            path.unlink(missing_ok=True)

    def _next_path(self) -> Path:
        path = self.directory / f"{self.split}-{len(self.paths):05d}.parquet.tmp"
        self.paths.append(path)
        return path

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._next_path(), self.schema)
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
        self._in_shard += len(self._buffer)
        self._buffer = []
        if self._in_shard >= self.shard_rows:
            self._writer.close()
            self._writer = None
            self._in_shard = 0


def _publish(config_dir: Path, shards: dict[str, list[Path]]) -> None:
    """Replace the config's previous shards (any count, any naming) by the new ones."""
    for split in SPLITS:
        for old in config_dir.glob(f"{split}-*.parquet"):
            old.unlink()
    for split, paths in shards.items():
        for i, tmp in enumerate(paths):
            tmp.replace(config_dir / shard_name(split, i, len(paths)))


class ExportTargetError(ValueError):
    """The output folder cannot take this export (a file, or a folder holding something else)."""


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None


def check_target(out_dir: Path, run_id: str, overwrite: bool = False) -> None:
    """Raise :class:`ExportTargetError` unless ``out_dir`` may take an export of ``run_id``: missing,
    empty, a previous export of the same run, or any folder with ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportTargetError(f"{out_dir} exists and is not a folder")
    if overwrite or not out_dir.exists():
        return
    # a manifest half-written by a killed export is not somebody else's file
    entries = sorted(
        p.name + ("/" if p.is_dir() else "") for p in out_dir.iterdir() if p.name != f"{MANIFEST}.tmp"
    )
    if not entries:
        return
    manifest = _read_manifest(out_dir)
    if manifest is not None and manifest.get("run_id") == run_id:
        return
    if manifest is not None:
        what = f"holds the export of another run ({manifest.get('run')!r})"
    else:
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries) - 5} more)" if len(entries) > 5 else "")
        what = f"is not empty and is not an export of this run (it holds {shown})"
    raise ExportTargetError(f"{out_dir} {what}; pass --overwrite to export into it anyway")


def run_id_of(run_dir: Path) -> str:
    """A run directory's identity in a manifest: a hash of its absolute path (no local path is
    written into a folder that may be uploaded)."""
    return "run-" + hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def _write_manifest(out_dir: Path, run_id: str, run_name: str) -> None:
    manifest = {"format": MANIFEST_FORMAT, "run": run_name, "run_id": run_id}
    tmp = out_dir / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out_dir / MANIFEST)


def export_dataset(
    sft: Iterable[SFTRecord],
    preference: Iterable[PreferenceRecord],
    out_dir: Path,
    summary: RunSummary | dict,
    test_fraction: float = 0.1,
    seed: int = 0,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    license: str | None = None,
    language: str | Sequence[str] = "en",
    pretty_name: str | None = None,
    repo_id: str | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Iterable[Any]] | None = None,
) -> Path:
    """Write the kept records as a HF dataset folder (configs sft/preference, splits train/test).

    ``sft`` and ``preference`` may be any iterables, generators included; each is read once, in
    order, and never held. Only records whose every verdict kept them are written. Every
    config/split gets at least one file, empty ones included, with the fixed schema; a split of
    more than ``shard_rows`` rows is written as several shards. Returns ``out_dir``.

    ``run_id`` names the run the records come from (default: the summary's name); ``out_dir`` must
    be missing, empty or an earlier export of that run, unless ``overwrite`` (see the module).
    ``license`` defaults to the summary's, else apache-2.0. ``extra``: configs beyond sft and
    preference (``step_labels``), written the same way when given.
    """
    splitters: dict[str, Splitter[dict[str, Any]]] = {c: Splitter(test_fraction, seed) for c in CONFIGS}
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    out_dir = Path(out_dir)
    summary = RunSummary.coerce(summary)
    run_id = run_id or summary.name
    check_target(out_dir, run_id, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_manifest(out_dir, run_id, summary.name)
    facts = CardFacts()
    counts: dict[str, dict[str, int]] = {}
    shards: dict[str, dict[str, list[Path]]] = {}
    writers: list[_ShardWriter] = []
    seen = 0
    try:
        for config, records in (("sft", sft), ("preference", preference), *(extra or {}).items()):
            splitters.setdefault(config, Splitter(test_fraction, seed))
            config_dir = out_dir / config
            config_dir.mkdir(parents=True, exist_ok=True)
            for split in SPLITS:  # left by an export that was killed
                for leftover in config_dir.glob(f"{split}-*.parquet.tmp"):
                    leftover.unlink()
            by_split = {s: _ShardWriter(config_dir, s, SCHEMAS[config], shard_rows) for s in SPLITS}
            writers += by_split.values()
            record_type, to_row, splitter = RECORD_TYPES[config], ROW_BUILDERS[config], splitters[config]
            for record in records:
                seen += 1
                if not isinstance(record, record_type):
                    what = f"{type(record).__name__} (id={getattr(record, 'id', '?')})"
                    raise TypeError(f"{config} records include a {what}")
                if not record.kept:
                    continue
                facts.add(config, record)
                for split, row in splitter.add(record.id, to_row(record)):
                    by_split[split].write(row)
            for split, row in splitter.finish():
                by_split[split].write(row)
            shards[config] = {s: w.close() for s, w in by_split.items()}
            counts[config] = {s: w.rows for s, w in by_split.items()}
    except BaseException:
        for writer in writers:
            writer.discard()
        raise

    for config in shards:
        _publish(out_dir / config, shards[config])
    card = render_card(
        summary,
        facts,
        counts,
        license=license,
        language=language,
        pretty_name=pretty_name,
        repo_id=repo_id,
        language_plot=write_language_plot(facts, out_dir),
    )
    tmp = out_dir / "README.md.tmp"
    tmp.write_text(card, encoding="utf-8")
    tmp.replace(out_dir / "README.md")
    written = sum(sum(c.values()) for c in counts.values())
    log.info(
        "exported %s to %s (%d rejected records left out)",
        ", ".join(f"{c}: {counts[c]['train']} train / {counts[c]['test']} test" for c in counts),
        out_dir,
        seen - written,
    )
    return out_dir
