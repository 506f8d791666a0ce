"""The run store: one embedded DuckDB file per run directory.

It holds every stage's output (kept and rejected rows, with the reason), which batches of a stage are
finished, quarantined input rows, and a cache of engine calls. A stage batch and its rows are written in
one transaction, so a run killed at any moment resumes from the last finished batch: nothing lost,
nothing duplicated, finished batches never regenerated.

At scale: a batch goes in as one Arrow table (one INSERT per batch, not one per row), and stages read
their input as a stream of row chunks from a second cursor (``iter_rows``), so no stage holds another
stage in memory. Selection that needs a whole stage (quantiles, gaps) asks DuckDB (``query``).

One writer at a time: a writing store holds an exclusive ``flock`` on ``RUN/synth.lock`` (the kernel
drops it when the process dies, even by ``kill -9``: no stale lock), with the writer's pid and command
line in it. A second writer, or a reader while a run writes (DuckDB admits no reader beside a writer),
gets ``RunBusy``, a one-line error naming that process. While it writes, the store keeps a small
snapshot of its funnel in ``RUN/progress.json`` (replaced atomically when a stage begins or ends, and at
most every ``PROGRESS_EVERY`` seconds as batches commit: a timer writes the last one), which
``synth stats`` shows while the run is in progress. Errors a user can act on (``StoreError``: the run is
busy, the disk is full, ``--out`` is not a directory) are one line, naming the run directory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shlex
import sys
import threading
import time
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
LOCK_NAME = "synth.lock"
PROGRESS_NAME = "progress.json"
PROGRESS_EVERY = 0.5  # seconds between two snapshots while batches commit (writing one per batch costs
# a quarter of the commit rate at 100-row batches)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS stages (
    stage VARCHAR PRIMARY KEY, position INTEGER, rows_in INTEGER, done BOOLEAN DEFAULT FALSE,
    batch_size INTEGER
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


class StoreError(RuntimeError):
    """A run directory that cannot be used as asked (busy, disk full, not a directory): one line."""


class RunBusy(StoreError):
    """Another process has the run directory open: a run writing it, or (for a writer) a reader."""

    def __init__(self, run_dir: Path | str, pid: int | None, command: str, *, reading: bool) -> None:
        self.run_dir, self.pid, self.command = Path(run_dir), pid, command
        who = f"pid {pid}: {command}" if command else f"pid {pid}"
        if reading:
            msg = (
                f"{run_dir}: a run is in progress there ({who}); wait for it to finish "
                f"(`synth stats {run_dir}` shows its progress)"
            )
        else:
            msg = (
                f"{run_dir} is in use by another process ({who}); wait for it to finish, or use "
                "another --out directory"
            )
        super().__init__(msg)


class DiskFull(StoreError):
    """The disk under the run directory filled up; the committed rows stay, the same command resumes."""

    def __init__(self, run_dir: Path | str, detail: str) -> None:
        super().__init__(
            f"{run_dir}: the disk is full ({detail}); the rows committed so far are kept: free some "
            "space and run the same command again to resume"
        )


def disk_full(exc: BaseException, run_dir: Path | str) -> DiskFull | None:
    """``exc`` (or what caused it) as a ``DiskFull`` when it is a full disk: ENOSPC from a file write,
    or DuckDB's IO error for it; else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DiskFull):
            return seen
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(run_dir, os.strerror(seen.errno))
        if isinstance(seen, duckdb.Error) and re.search(
            r"no space left|disk is full|ENOSPC", str(seen), re.I
        ):
            return DiskFull(run_dir, "DuckDB: " + str(seen).splitlines()[0])
        seen = seen.__cause__ or seen.__context__
    return None


def _command_line() -> str:
    argv = list(sys.argv) or [""]
    argv[0] = Path(argv[0]).name or argv[0]
    return shlex.join(argv)


def _live_command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return shlex.join(a.decode(errors="replace") for a in raw.split(b"\0") if a)


def lock_holder(run_dir: Path | str) -> tuple[int | None, str] | None:
    """(pid, command line) of the process writing ``run_dir`` now, or None when no process does.

    Whether a run writes is the kernel's answer (the ``flock`` on ``synth.lock``), not the file's
    content: a run killed with ``kill -9`` leaves its pid in the file but no lock."""
    try:
        fh = open(Path(run_dir) / LOCK_NAME, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            fcntl.flock(fh, fcntl.LOCK_UN)
            return None
        for _ in range(100):  # the writer fills the file just after it takes the lock
            fh.seek(0)
            pid, _, command = fh.read().decode(errors="replace").partition("\n")
            if pid.strip().isdigit():
                return int(pid), command.strip()
            time.sleep(0.01)
    return None, ""


def running_pid(run_dir: Path | str) -> int | None:
    """The pid of the process writing ``run_dir`` now (a run in progress), or None."""
    holder = lock_holder(run_dir)
    return None if holder is None else holder[0]


def _make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise StoreError(f"cannot create the run directory {run_dir}: {blocker} is a file") from None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(run_dir, os.strerror(e.errno)) from None
        raise StoreError(f"cannot create the run directory {run_dir}: {e.strerror or e}") from None


def _lock_conflict(e: duckdb.Error) -> int | None:
    """The pid DuckDB names when another process holds the database file (-1: none named)."""
    if "lock" not in str(e).lower():
        return None
    found = re.search(r"PID (\d+)", str(e))
    return int(found.group(1)) if found else -1


# run dirs this process writes: resolved path -> [lock file, stores open on it, pid]. Stores of one
# process share the lock (and DuckDB shares its database between them), other processes are refused.
_HELD: dict[str, list[Any]] = {}
_SERVING: dict[str, Any] = {}  # run dirs whose live-read socket a store of this process answers


def _lock(run_dir: Path) -> str:
    """Take the exclusive flock on RUN/synth.lock (or share this process's), with this process's pid
    and command line in the file. A reader checking for a writer holds a shared lock for an instant:
    retry for a moment before refusing."""
    key = str(run_dir.resolve())
    held = _HELD.get(key)
    if held is not None and held[2] == os.getpid():
        held[1] += 1
        return key
    try:
        fh = open(run_dir / LOCK_NAME, "a+b")  # noqa: SIM115 - held until the last store closes
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(run_dir, os.strerror(e.errno)) from None
        raise StoreError(f"cannot write in the run directory {run_dir}: {e.strerror or e}") from None
    deadline = time.monotonic() + 1.0
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                fh.close()
                holder = lock_holder(run_dir) or (None, "")
                raise RunBusy(run_dir, *holder, reading=False) from None
            time.sleep(0.02)
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n{_command_line()}\n".encode())
    fh.flush()
    _HELD[key] = [fh, 1, os.getpid()]
    return key


def _unlock(key: str) -> None:
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        held[0].close()  # closing the file drops the flock


def _stop_reads(key: str, reads: Any) -> None:
    if _SERVING.get(key) is reads:
        del _SERVING[key]
    reads.close()


def _close_stream(cur: duckdb.DuckDBPyConnection, reader: pa.RecordBatchReader | None) -> None:
    if reader is not None:
        reader.close()
    cur.close()


def funnel_of(query: Any) -> list[dict[str, Any]]:
    """A store's funnel through ``query(sql, args) -> rows`` (the store's own connection, or a running
    run's live-read socket): rows in and out per stage, in run order, with rejection reasons."""
    stages = query("SELECT stage, rows_in, done FROM stages ORDER BY position")
    counts = {
        stage: (k, r)
        for stage, k, r in query(
            "SELECT stage, count(*) FILTER (WHERE kept), count(*) FILTER (WHERE NOT kept) "
            "FROM records GROUP BY stage"
        )
    }
    by_stage: dict[str, dict[str, int]] = {}
    for stage, reason, n in query(
        "SELECT stage, reason, count(*) FROM records WHERE NOT kept "
        "GROUP BY stage, reason ORDER BY count(*) DESC, reason"
    ):
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


class Store:
    def __init__(self, run_dir: Path | str, read_only: bool = False) -> None:
        self.run_dir = Path(run_dir)
        path = self.run_dir / DB_NAME
        self._lock = None
        # overlapping batches (Run.map with several in flight) call the engine cache from worker
        # threads while the driver commits: one connection, so its writes and reads take turns
        self.mutex = threading.RLock()
        if read_only and not path.exists():
            raise FileNotFoundError(f"no run store at {path}")
        if read_only:
            holder = lock_holder(self.run_dir)
            if holder is not None:  # DuckDB admits no reader beside its writer
                raise RunBusy(self.run_dir, *holder, reading=True)
        else:
            if self.run_dir.exists() and not self.run_dir.is_dir():
                raise StoreError(f"cannot use {self.run_dir} as a run directory: it is a file")
            _make_run_dir(self.run_dir)
            self._lock = weakref.finalize(self, _unlock, _lock(self.run_dir))
        try:
            self.db = self._connect(path, read_only)
        except BaseException:
            self._release_lock()
            raise
        self._seq: dict[str, int] = {}
        # open streams (cursor -> its Arrow reader): a reader left open keeps the database open
        self._cursors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._live: dict[str, Any] | None = None  # the funnel so far (progress.json), once asked
        self._progress_at = 0.0  # when progress.json was last written (monotonic)
        self._progress_timer: threading.Timer | None = None  # writes a snapshot held back by the throttle
        self._closed = False
        self._reads: Any = None  # the live-read socket (synth.live), on the first writer of the run dir
        if not read_only:
            self.db.execute(_SCHEMA)
            # stores written before the group / batch size columns existed
            self.db.execute("ALTER TABLE records ADD COLUMN IF NOT EXISTS grp VARCHAR")
            self.db.execute("ALTER TABLE stages ADD COLUMN IF NOT EXISTS batch_size INTEGER")
            self._serve_reads()
        columns = {r[0] for r in self.db.execute("DESCRIBE records").fetchall()}
        self._grp = "grp" if "grp" in columns else "key"  # read-only, pre-recipe store: no groups

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock()  # the finalizer: once, here or when an unclosed store is collected
            self._lock = None

    def _connect(self, path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
        # DuckDB caches pages up to its memory limit (80% of RAM by default): bound it, so a run's
        # memory does not grow with its store (SYNTH_DUCKDB_MEMORY, e.g. "4GB", to change it)
        limit = os.environ.get("SYNTH_DUCKDB_MEMORY", "1GB")
        deadline = time.monotonic() + (5.0 if not read_only else 0.0)
        while True:
            try:
                return duckdb.connect(str(path), read_only=read_only, config={"memory_limit": limit})
            except duckdb.IOException as e:
                pid = _lock_conflict(e)
                if pid is None:
                    if disk_full(e, self.run_dir):
                        raise disk_full(e, self.run_dir) from None
                    raise
                if read_only:  # a run began between the check and the connect
                    holder = lock_holder(self.run_dir) or (pid if pid > 0 else None, "")
                    raise RunBusy(
                        self.run_dir, holder[0], holder[1] or _live_command(pid), reading=True
                    ) from None
                if time.monotonic() > deadline:  # a reader (stats, export) kept it open
                    raise RunBusy(
                        self.run_dir, pid if pid > 0 else None, _live_command(pid), reading=False
                    ) from None
                time.sleep(0.1)

    def _serve_reads(self) -> None:
        """Answer read-only queries from other processes while this store writes (`synth view` of a
        running run: DuckDB admits no other reader); one socket per run directory and process."""
        from synth import live

        key = str(self.run_dir.resolve())
        if key not in _SERVING:
            self._reads = live.start(self.run_dir, self.db)
            if self._reads is not None:
                _SERVING[key] = self._reads
                # a store dropped without close() must not leave its database open through the socket
                self._reads_finalizer = weakref.finalize(self, _stop_reads, key, self._reads)

    def close(self) -> None:
        if self._reads is not None:
            self._reads = None
            self._reads_finalizer()
        with self.mutex:
            timer, self._progress_timer = self._progress_timer, None
            if timer is not None:
                timer.cancel()
                self._dump_progress()  # the snapshot the throttle held back
            self._closed = True
        try:
            for cur, reader in list(self._cursors.items()):  # streams a stage left unfinished
                _close_stream(cur, reader)
            self._cursors.clear()
            self.db.close()
        finally:
            self._release_lock()

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
    def begin_stage(self, stage: str, rows_in: int | None, batch_size: int | None = None) -> None:
        position = self.db.execute("SELECT count(*) FROM stages").fetchone()[0]
        self.db.execute(
            "INSERT INTO stages (stage, position, rows_in, batch_size) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (stage) DO UPDATE SET rows_in = excluded.rows_in, "
            "batch_size = coalesce(excluded.batch_size, stages.batch_size)",
            [stage, position, rows_in, batch_size],
        )
        with self.mutex:
            live = self._progress()
            if stage not in live["funnel"]:
                live["funnel"][stage] = {"stage": stage, "rows_in": rows_in, "kept": 0, "rejected": 0,
                                         "reasons": {}, "done": False}  # fmt: skip
            live["funnel"][stage]["rows_in"] = rows_in
            self._write_progress(now=True)

    def end_stage(self, stage: str) -> None:
        self.db.execute("UPDATE stages SET done = TRUE WHERE stage = ?", [stage])
        with self.mutex:
            entry = self._progress()["funnel"].get(stage)
            if entry is not None:
                entry["done"] = True
            self._write_progress(now=True)

    def stage_done(self, stage: str) -> bool:
        row = self.db.execute("SELECT done FROM stages WHERE stage = ?", [stage]).fetchone()
        return bool(row and row[0])

    def stage_begun(self, stage: str) -> bool:
        """Whether ``stage`` has begun (finished or not) or has any committed batch."""
        return bool(
            self.db.execute(
                "SELECT (SELECT count(*) FROM stages WHERE stage = ?) + "
                "(SELECT count(*) FROM batches WHERE stage = ?)",
                [stage, stage],
            ).fetchone()[0]
        )

    def stage_batch_size(self, stage: str) -> int | None:
        """The batch size ``stage`` committed its batches with, once it has committed one (a resumed
        stage keeps its batches whatever batch size the resuming command gives)."""
        row = self.db.execute(
            "SELECT batch_size FROM stages WHERE stage = ? "
            "AND EXISTS (SELECT 1 FROM batches WHERE stage = ?)",
            [stage, stage],
        ).fetchone()
        return row[0] if row else None

    def has_rows(self, exclude: Sequence[str] = ()) -> bool:
        """Whether any stage but ``exclude`` has written a row."""
        return bool(
            self.db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM records WHERE stage NOT IN (SELECT unnest(?)) LIMIT 1)",
                [list(exclude)],
            ).fetchone()[0]
        )

    def reset(self) -> None:
        """Forget every stage, row and quarantined input row and the run's meta (its engine cache
        stays: entries are keyed by model, request and sampling, right for any configuration)."""
        with self.transaction():
            for table in ("records", "batches", "stages", "quarantine", "meta"):
                self.db.execute(f"DELETE FROM {table}")
        with self.mutex:
            self._seq.clear()
            self._live = None

    def diff_rows(
        self, stage: str, rows: Iterable[tuple[str, str]], show: int = 5
    ) -> dict[str, tuple[int, list[str]]]:
        """How ``rows`` ((key, data) pairs, streamed) differ from the stored rows of ``stage``: for
        "added", "edited" and "removed", the count and the first ``show`` keys. DuckDB compares hashes
        of the rows, so neither side is held in memory."""
        self.db.execute("CREATE OR REPLACE TEMP TABLE _incoming (n BIGINT, key VARCHAR, h VARCHAR)")
        try:
            n = 0
            chunk: list[tuple[str, str]] = []

            def flush() -> None:
                nonlocal n
                incoming = pa.table(  # noqa: F841 - DuckDB reads this local by name below
                    {
                        "n": pa.array(range(n, n + len(chunk)), pa.int64()),
                        "key": pa.array([k for k, _ in chunk], pa.string()),
                        "h": pa.array([hashlib.md5(d.encode()).hexdigest() for _, d in chunk], pa.string()),
                    }
                )
                self.db.execute("INSERT INTO _incoming SELECT * FROM incoming")
                n += len(chunk)
                chunk.clear()

            for key, data in rows:
                chunk.append((key, data))
                if len(chunk) == 2048:
                    flush()
            if chunk:
                flush()
            stored = "SELECT key, seq AS n, md5(data) AS h FROM records WHERE stage = ?"
            both = f"_incoming i JOIN ({stored}) r USING (key)"
            queries = {
                "added": f"SELECT i.key, i.n FROM _incoming i ANTI JOIN ({stored}) r USING (key)",
                "edited": f"SELECT i.key, i.n FROM {both} WHERE i.h <> r.h",
                "removed": f"SELECT r.key, r.n FROM ({stored}) r ANTI JOIN _incoming i USING (key)",
            }
            out = {}
            for name, sql in queries.items():
                count = self.db.execute(f"SELECT count(*) FROM ({sql})", [stage]).fetchone()[0]
                keys = self.db.execute(f"SELECT key FROM ({sql}) ORDER BY n LIMIT {show}", [stage]).fetchall()
                out[name] = (count, [k for (k,) in keys])
            return out
        finally:
            self.db.execute("DROP TABLE IF EXISTS _incoming")

    def done_batches(self, stage: str) -> set[str]:
        rows = self.db.execute("SELECT batch FROM batches WHERE stage = ?", [stage]).fetchall()
        return {r[0] for r in rows}

    def commit_batch(self, stage: str, batch: str, records: Iterable[Record]) -> None:
        """Write a finished batch's rows and mark it done, atomically (one Arrow insert)."""
        with self.mutex:
            self._commit_batch(stage, batch, records)

    def _commit_batch(self, stage: str, batch: str, records: Iterable[Record]) -> None:
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
        entry = self._progress()["funnel"].setdefault(
            stage, {"stage": stage, "rows_in": None, "kept": 0, "rejected": 0, "reasons": {}, "done": False}
        )
        for kept, reason in zip(cols["kept"], cols["reason"], strict=True):
            if kept:
                entry["kept"] += 1
            else:
                entry["rejected"] += 1
                entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
        self._write_progress()

    # -- progress snapshot (what `synth stats` shows while the run writes) ---------------------
    def _progress(self) -> dict[str, Any]:
        if self._live is None:
            funnel = {f["stage"]: f for f in self.funnel()}
            quarantined = self.db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            self._live = {"funnel": funnel, "quarantined": quarantined}
        return self._live

    def _write_progress(self, now: bool = False) -> None:
        """Write RUN/progress.json now (``now``, or when the last one is ``PROGRESS_EVERY`` seconds
        old), else have a timer write it when that time is up: a held run's snapshot is never more
        than ``PROGRESS_EVERY`` seconds behind its store."""
        with self.mutex:
            wait = self._progress_at + PROGRESS_EVERY - time.monotonic()
            if now or wait <= 0:
                self._dump_progress()
            elif self._progress_timer is None:
                self._progress_timer = threading.Timer(wait, self._flush_progress)
                self._progress_timer.daemon = True
                self._progress_timer.start()

    def _flush_progress(self) -> None:
        with self.mutex:
            if self._progress_timer is None or self._closed:
                return  # written meanwhile, or closed
            if self._live is None:  # recounted by the next write (it asks the store: not from here)
                self._progress_timer = None
                return
            self._dump_progress()

    def _dump_progress(self) -> None:
        """RUN/progress.json: the funnel so far, written to a temporary file and renamed over the
        last one (a reader sees the old snapshot or the new one, never half of one)."""
        timer, self._progress_timer = self._progress_timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        self._progress_at = time.monotonic()
        live = self._progress()
        funnel = []
        for f in live["funnel"].values():
            reasons = dict(sorted(f["reasons"].items(), key=lambda kv: (-kv[1], str(kv[0]))))
            funnel.append({**f, "reasons": reasons})
        snapshot = {
            "pid": os.getpid(),
            "command": _command_line(),
            "updated": round(time.time(), 3),
            "funnel": funnel,
            "quarantined": live["quarantined"],
        }
        tmp = self.run_dir / f".{PROGRESS_NAME}.tmp"
        tmp.write_text(json.dumps(snapshot, default=str))
        os.replace(tmp, self.run_dir / PROGRESS_NAME)

    def _next_seq(self, stage: str) -> int:
        if stage not in self._seq:
            self._seq[stage] = self.db.execute(
                "SELECT coalesce(max(seq), -1) + 1 FROM records WHERE stage = ?", [stage]
            ).fetchone()[0]
        return self._seq[stage]

    def selection(
        self, stages: str | Sequence[str], kept: bool | None, latest: bool = False
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
        rows, args = self.selection(stages, kept, latest)
        order_by = "grp, s, seq" if order == "group" else "s, seq"
        cur = self.db.cursor()
        try:
            sql = f"SELECT key, kind, grp, data FROM ({rows}) ORDER BY {order_by}"
            reader = cur.sql(sql, params=args).to_arrow_reader(chunk)
            self._cursors[cur] = reader
            for rb in reader:
                cols = rb.to_pydict()
                yield from zip(cols["key"], cols["kind"], cols["grp"], cols["data"], strict=True)
        finally:
            _close_stream(cur, self._cursors.pop(cur, None))

    def iter_records(
        self, stages: str | Sequence[str], kept: bool | None = None, **kw: Any
    ) -> Iterator[Record]:
        for _key, kind, _grp, data in self.iter_rows(stages, kept, **kw):
            yield record_from_json(data, kind)

    def records(self, stage: str, kept: bool | None = None) -> list[Record]:
        """A stage's rows as a list (small stages and tests; stages stream with ``iter_records``)."""
        return list(self.iter_records(stage, kept))

    def count(self, stages: str | Sequence[str], kept: bool | None = None, latest: bool = False) -> int:
        rows, args = self.selection(stages, kept, latest)
        return self.db.execute(f"SELECT count(*) FROM ({rows})", args).fetchone()[0]

    def quantile(
        self, stages: str | Sequence[str], kept: bool | None, score: str, q: float, latest: bool = False
    ) -> float | None:
        """The ``q`` quantile (linear, as numpy's default) of ``scores[score]`` over the rows; None
        when no row has that score."""
        rows, args = self.selection(stages, kept, latest)
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
        return funnel_of(self.query)

    # -- quarantine ----------------------------------------------------------------------
    def quarantine(self, source: str, line: int, field: str, error: str, raw: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?)",
            [source, line, field, error, raw],
        )
        with self.mutex:
            self._live = None  # recounted with the next snapshot (a row quarantined again counts once)

    def quarantined(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT source, line, field, error FROM quarantine ORDER BY source, line"
        ).fetchall()
        return [dict(zip(("source", "line", "field", "error"), r, strict=True)) for r in rows]

    # -- engine cache --------------------------------------------------------------------
    def cache_get(self, keys: list[str]) -> dict[str, list[Completion]]:
        if not keys:
            return {}
        with self.mutex:
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
        # one Arrow insert per call (DuckDB reads the local table by name)
        with self.mutex, self.transaction():
            self.db.execute("INSERT OR REPLACE INTO engine_cache SELECT * FROM fresh")

    def cache_size(self) -> int:
        return self.db.execute("SELECT count(*) FROM engine_cache").fetchone()[0]
