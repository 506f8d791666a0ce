"""The run store: one embedded DuckDB file per run directory.

It holds every stage's output (kept and rejected rows, with the reason), which batches of a stage are
finished, quarantined input rows, and a cache of engine calls. A stage batch and its rows are written in
one transaction, so a run killed at any moment resumes from the last finished batch: nothing lost,
nothing duplicated, finished batches never regenerated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from synth.engines.base import Completion, Request, SamplingParams
from synth.records import Record, record_from_json

DB_NAME = "synth.duckdb"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS stages (
    stage VARCHAR PRIMARY KEY, position INTEGER, rows_in INTEGER, done BOOLEAN DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS batches (stage VARCHAR, batch VARCHAR, PRIMARY KEY (stage, batch));
CREATE TABLE IF NOT EXISTS records (
    stage VARCHAR, key VARCHAR, seq BIGINT, kind VARCHAR, kept BOOLEAN, reason VARCHAR,
    data VARCHAR, PRIMARY KEY (stage, key)
);
CREATE TABLE IF NOT EXISTS quarantine (
    source VARCHAR, line INTEGER, field VARCHAR, error VARCHAR, raw VARCHAR,
    PRIMARY KEY (source, line)
);
CREATE TABLE IF NOT EXISTS engine_cache (
    key VARCHAR PRIMARY KEY, model VARCHAR, completions VARCHAR
);
"""


def cache_key(model: str, request: Request, params: SamplingParams | dict[str, Any]) -> str:
    """Key of one engine call: model, request and its parameters (sampling with its seed, or those of
    another call kind such as choice log-probs)."""
    params = params.to_dict() if isinstance(params, SamplingParams) else params
    blob = json.dumps(
        {"model": model, "messages": list(request.messages), "sampling": params},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class Store:
    def __init__(self, run_dir: Path | str, read_only: bool = False) -> None:
        self.run_dir = Path(run_dir)
        path = self.run_dir / DB_NAME
        if read_only and not path.exists():
            raise FileNotFoundError(f"no run store at {path}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.db = duckdb.connect(str(path), read_only=read_only)
        if not read_only:
            self.db.execute(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- run metadata --------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, json.dumps(value, default=str)])

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    # -- stages --------------------------------------------------------------------------
    def begin_stage(self, stage: str, rows_in: int) -> None:
        position = self.db.execute("SELECT count(*) FROM stages").fetchone()[0]
        self.db.execute(
            "INSERT INTO stages (stage, position, rows_in) VALUES (?, ?, ?) "
            "ON CONFLICT (stage) DO UPDATE SET rows_in = excluded.rows_in",
            [stage, position, rows_in],
        )

    def end_stage(self, stage: str) -> None:
        self.db.execute("UPDATE stages SET done = TRUE WHERE stage = ?", [stage])

    def stage_done(self, stage: str) -> bool:
        row = self.db.execute("SELECT done FROM stages WHERE stage = ?", [stage]).fetchone()
        return bool(row and row[0])

    def done_batches(self, stage: str) -> set[str]:
        rows = self.db.execute("SELECT batch FROM batches WHERE stage = ?", [stage]).fetchall()
        return {r[0] for r in rows}

    def commit_batch(self, stage: str, batch: str, records: Iterable[Record]) -> None:
        """Write a finished batch's rows and mark it done, atomically."""
        with self.transaction():
            seq = self.db.execute(
                "SELECT coalesce(max(seq), -1) + 1 FROM records WHERE stage = ?", [stage]
            ).fetchone()[0]
            rows = []
            for i, rec in enumerate(records):
                last_reject = next((v for v in reversed(rec.verdicts) if not v.kept), None)
                rows.append(
                    [
                        stage,
                        rec.id,
                        seq + i,
                        rec.kind,
                        rec.kept,
                        last_reject.reason if last_reject else None,
                        rec.to_json(),
                    ]
                )
            if rows:
                self.db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.execute("INSERT INTO batches VALUES (?, ?)", [stage, batch])

    def records(self, stage: str, kept: bool | None = None) -> list[Record]:
        sql = "SELECT data FROM records WHERE stage = ?"
        args: list[Any] = [stage]
        if kept is not None:
            sql += " AND kept = ?"
            args.append(kept)
        rows = self.db.execute(sql + " ORDER BY seq", args).fetchall()
        return [record_from_json(r[0]) for r in rows]

    def records_in_run_order(self) -> list[Record]:
        """Every stage's rows, stage by stage as the run went, in one query."""
        rows = self.db.execute(
            "SELECT r.data FROM records r JOIN stages s USING (stage) ORDER BY s.position, r.seq"
        ).fetchall()
        return [record_from_json(r[0]) for r in rows]

    def funnel(self) -> list[dict[str, Any]]:
        """Rows in and out per stage, in run order, with rejection reasons and counts."""
        stages = self.db.execute("SELECT stage, rows_in, done FROM stages ORDER BY position").fetchall()
        out = []
        for stage, rows_in, done in stages:
            kept, rejected = self.db.execute(
                "SELECT count(*) FILTER (WHERE kept), count(*) FILTER (WHERE NOT kept) "
                "FROM records WHERE stage = ?",
                [stage],
            ).fetchone()
            reasons = dict(
                self.db.execute(
                    "SELECT reason, count(*) FROM records WHERE stage = ? AND NOT kept "
                    "GROUP BY reason ORDER BY count(*) DESC, reason",
                    [stage],
                ).fetchall()
            )
            out.append(
                {
                    "stage": stage,
                    "rows_in": rows_in,
                    "kept": kept,
                    "rejected": rejected,
                    "reasons": reasons,
                    "done": bool(done),
                }
            )
        return out

    # -- quarantine ----------------------------------------------------------------------
    def quarantine(self, source: str, line: int, field: str, error: str, raw: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?)",
            [source, line, field, error, raw],
        )

    def quarantined(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT source, line, field, error FROM quarantine ORDER BY source, line"
        ).fetchall()
        return [dict(zip(("source", "line", "field", "error"), r, strict=True)) for r in rows]

    # -- engine cache --------------------------------------------------------------------
    def cache_get(self, keys: list[str]) -> dict[str, list[Completion]]:
        if not keys:
            return {}
        rows = self.db.execute(
            "SELECT key, completions FROM engine_cache WHERE key IN (SELECT unnest(?))", [keys]
        ).fetchall()
        return {k: [Completion.from_dict(c) for c in json.loads(v)] for k, v in rows}

    def cache_put(self, model: str, entries: dict[str, list[Completion]]) -> None:
        rows = [[k, model, json.dumps([c.to_dict() for c in comps])] for k, comps in entries.items()]
        if rows:
            with self.transaction():
                self.db.executemany("INSERT OR REPLACE INTO engine_cache VALUES (?, ?, ?)", rows)

    def cache_size(self) -> int:
        return self.db.execute("SELECT count(*) FROM engine_cache").fetchone()[0]
