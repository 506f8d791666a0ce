"""The run store: one embedded DuckDB file per run directory.

It holds every stage's output (kept and rejected rows, with the reason), which batches of a stage are
finished, quarantined input rows, and a cache of engine calls. A stage batch and its rows are written in
one transaction, so a run killed at any moment resumes from the last finished batch: nothing lost,
nothing duplicated, finished batches never regenerated.

At scale: a batch goes in as one Arrow table (one INSERT per batch, not one per row), and stages read
their input as a stream of row chunks from a second cursor (``iter_rows``), so no stage holds another
stage in memory. Selection that needs a whole stage (quantiles, gaps) asks DuckDB (``query``).
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

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
    data VARCHAR, grp VARCHAR, PRIMARY KEY (stage, key)
);
CREATE TABLE IF NOT EXISTS quarantine (
    source VARCHAR, line INTEGER, field VARCHAR, error VARCHAR, raw VARCHAR,
    PRIMARY KEY (source, line)
);
CREATE TABLE IF NOT EXISTS engine_cache (
    key VARCHAR PRIMARY KEY, model VARCHAR, completions VARCHAR
);
"""


_COLUMNS: dict[str, pa.DataType] = {
    "stage": pa.string(),
    "key": pa.string(),
    "seq": pa.int64(),
    "kind": pa.string(),
    "kept": pa.bool_(),
    "reason": pa.string(),
    "data": pa.string(),
    "grp": pa.string(),
}


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
        # DuckDB caches pages up to its memory limit (80% of RAM by default): bound it, so a run's
        # memory does not grow with its store (SYNTH_DUCKDB_MEMORY, e.g. "4GB", to change it)
        limit = os.environ.get("SYNTH_DUCKDB_MEMORY", "1GB")
        self.db = duckdb.connect(str(path), read_only=read_only, config={"memory_limit": limit})
        self._seq: dict[str, int] = {}
        self._cursors: weakref.WeakSet = weakref.WeakSet()
        if not read_only:
            self.db.execute(_SCHEMA)
            # stores written before the group column existed
            self.db.execute("ALTER TABLE records ADD COLUMN IF NOT EXISTS grp VARCHAR")
        columns = {r[0] for r in self.db.execute("DESCRIBE records").fetchall()}
        self._grp = "grp" if "grp" in columns else "key"  # read-only, pre-recipe store: no groups

    def close(self) -> None:
        for cur in list(self._cursors):  # streams a stage left unfinished (an exception mid-stage)
            cur.close()
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
        """Write a finished batch's rows and mark it done, atomically (one Arrow insert)."""
        cols: dict[str, list[Any]] = {c: [] for c in _COLUMNS}
        for rec in records:
            last_reject = next((v for v in reversed(rec.verdicts) if not v.kept), None)
            cols["key"].append(rec.id)
            cols["kind"].append(rec.kind)
            cols["kept"].append(rec.kept)
            cols["reason"].append(last_reject.reason if last_reject else None)
            cols["data"].append(rec.to_json())
            cols["grp"].append(rec.group_key)
        n = len(cols["key"])
        seq = self._next_seq(stage)
        cols["stage"] = [stage] * n
        cols["seq"] = list(range(seq, seq + n))
        table = pa.table({c: pa.array(cols[c], type=_COLUMNS[c]) for c in _COLUMNS})
        with self.transaction():
            if n:
                self.db.from_arrow(table).insert_into("records")  # columns in the table's order
            self.db.execute("INSERT INTO batches VALUES (?, ?)", [stage, batch])
        self._seq[stage] = seq + n  # only once committed: a failed batch leaves the counter alone

    def _next_seq(self, stage: str) -> int:
        if stage not in self._seq:
            self._seq[stage] = self.db.execute(
                "SELECT coalesce(max(seq), -1) + 1 FROM records WHERE stage = ?", [stage]
            ).fetchone()[0]
        return self._seq[stage]

    def _selection(
        self, stages: str | Sequence[str], kept: bool | None, latest: bool
    ) -> tuple[str, list[Any]]:
        """The rows of ``stages`` (kept, rejected or both) as a subquery with columns key, kind, grp,
        data, s (the stage's position in ``stages``) and seq; ``latest``: one row per key, its last
        appearance over ``stages`` (a candidate that went round a repair loop)."""
        stages = [stages] if isinstance(stages, str) else list(stages)
        rank = " ".join(f"WHEN ? THEN {i}" for i in range(len(stages)))
        sql = (
            f"SELECT key, kind, {self._grp} AS grp, data, kept, seq, CASE stage {rank} END AS s FROM records "
            f"WHERE stage IN (SELECT unnest(?))"
        )
        args: list[Any] = [*stages, stages]
        if latest:
            sql = f"SELECT * FROM ({sql}) QUALIFY row_number() OVER (PARTITION BY key ORDER BY s DESC) = 1"
        sql = f"SELECT * FROM ({sql})"
        if kept is not None:
            sql += " WHERE kept = ?"
            args.append(kept)
        return sql, args

    def iter_rows(
        self,
        stages: str | Sequence[str],
        kept: bool | None = None,
        *,
        order: str = "run",
        latest: bool = False,
        chunk: int = 2048,
    ) -> Iterator[tuple[str, str, str, str]]:
        """Stream (key, kind, grp, data) of the rows of ``stages`` without loading them all.

        ``order``: "run" (stage by stage in the given order, then as written) or "group" (by group
        key, then as written: every group's rows arrive together). A separate cursor streams, so the
        caller may commit other stages while it reads.
        """
        rows, args = self._selection(stages, kept, latest)
        order_by = "grp, s, seq" if order == "group" else "s, seq"
        cur = self.db.cursor()
        self._cursors.add(cur)
        try:
            sql = f"SELECT key, kind, grp, data FROM ({rows}) ORDER BY {order_by}"
            for rb in cur.sql(sql, params=args).to_arrow_reader(chunk):
                cols = rb.to_pydict()
                yield from zip(cols["key"], cols["kind"], cols["grp"], cols["data"], strict=True)
        finally:
            cur.close()

    def iter_records(
        self, stages: str | Sequence[str], kept: bool | None = None, **kw: Any
    ) -> Iterator[Record]:
        for _key, kind, _grp, data in self.iter_rows(stages, kept, **kw):
            yield record_from_json(data, kind)

    def records(self, stage: str, kept: bool | None = None) -> list[Record]:
        """A stage's rows as a list (small stages and tests; stages stream with ``iter_records``)."""
        return list(self.iter_records(stage, kept))

    def count(self, stages: str | Sequence[str], kept: bool | None = None, latest: bool = False) -> int:
        rows, args = self._selection(stages, kept, latest)
        return self.db.execute(f"SELECT count(*) FROM ({rows})", args).fetchone()[0]

    def quantile(
        self, stages: str | Sequence[str], kept: bool | None, score: str, q: float, latest: bool = False
    ) -> float | None:
        """The ``q`` quantile (linear, as numpy's default) of ``scores[score]`` over the rows; None
        when no row has that score."""
        rows, args = self._selection(stages, kept, latest)
        value = self.db.execute(
            "SELECT quantile_cont(v, ?) FROM (SELECT TRY_CAST(json_extract(data, ?) AS DOUBLE) AS v "
            f"FROM ({rows})) WHERE v IS NOT NULL",
            [q, f'$.scores."{score}"', *args],
        ).fetchone()[0]
        return None if value is None else float(value)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        """An aggregate over the store (e.g. a score quantile): DuckDB does the whole-stage work."""
        return self.db.execute(sql, list(args)).fetchall()

    def funnel(self) -> list[dict[str, Any]]:
        """Rows in and out per stage, in run order, with rejection reasons and counts (two aggregate
        queries, whatever the run's size)."""
        stages = self.db.execute("SELECT stage, rows_in, done FROM stages ORDER BY position").fetchall()
        counts = {
            stage: (k, r)
            for stage, k, r in self.db.execute(
                "SELECT stage, count(*) FILTER (WHERE kept), count(*) FILTER (WHERE NOT kept) "
                "FROM records GROUP BY stage"
            ).fetchall()
        }
        by_stage: dict[str, dict[str, int]] = {}
        for stage, reason, n in self.db.execute(
            "SELECT stage, reason, count(*) FROM records WHERE NOT kept "
            "GROUP BY stage, reason ORDER BY count(*) DESC, reason"
        ).fetchall():
            by_stage.setdefault(stage, {})[reason] = n
        out = []
        for stage, rows_in, done in stages:
            kept, rejected = counts.get(stage, (0, 0))
            reasons = by_stage.get(stage, {})
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
        if not entries:
            return
        fresh = pa.table(  # noqa: F841 - DuckDB reads this local by name below
            {
                "key": pa.array(list(entries), pa.string()),
                "model": pa.array([model] * len(entries), pa.string()),
                "completions": pa.array(
                    [json.dumps([c.to_dict() for c in comps]) for comps in entries.values()], pa.string()
                ),
            }
        )
        with self.transaction():  # one Arrow insert per call (DuckDB reads the local table by name)
            self.db.execute("INSERT OR REPLACE INTO engine_cache SELECT * FROM fresh")

    def cache_size(self) -> int:
        return self.db.execute("SELECT count(*) FROM engine_cache").fetchone()[0]
