"""Reads of a run's store while the run writes it.

DuckDB lets one process write a database file and no other process read it at the same time. A run
therefore answers read-only queries itself: its writing store listens on a Unix socket (one per run
directory, in a private per-user folder, mode 0700) and runs each query it receives on a cursor of its
own database, so the reader sees every batch committed so far (DuckDB's MVCC: a query never sees half a
batch). Only ``SELECT`` statements are run; results are capped at ``MAX_ROWS`` rows. `synth view` uses
this to show a run's rows while it goes on; with no run writing, readers open the store read-only.

Protocol: one JSON line ``{"sql": ..., "args": [...]}`` in, one JSON line ``{"columns": [...],
"rows": [[...], ...]}`` (or ``{"error": ...}``) out, then the connection closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import duckdb

MAX_ROWS = 10_000  # a reader pages; the writer never ships a stage through its socket
TIMEOUT = 60.0  # seconds a reader waits for the run's answer


class LiveReadError(RuntimeError):
    """A running run could not answer a read (no socket: a run started before live reads existed)."""


def socket_path(run_dir: Path | str) -> Path:
    """Where the run writing ``run_dir`` listens (short: a Unix socket path has at most 107 bytes). The
    temp dir, not ``$XDG_RUNTIME_DIR``: a run started from cron or a non-login shell has none, and the
    viewer must find the socket the run made."""
    base = Path(tempfile.gettempdir()) / f"synth-{os.getuid()}"
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:24]
    return base / f"{digest}.sock"


def _only_selects(db: duckdb.DuckDBPyConnection, sql: str) -> None:
    statements = db.extract_statements(sql)
    if not statements:
        raise PermissionError("no statement")
    for st in statements:
        if st.type != duckdb.StatementType.SELECT:
            raise PermissionError(f"read-only: {st.type.name} statements are refused")


class ReadServer:
    """The socket a writing store answers reads on (started by ``Store``; ``SYNTH_LIVE_READS=0`` turns
    it off): a thread accepts, a thread per connection answers its one query."""

    def __init__(self, run_dir: Path, db: duckdb.DuckDBPyConnection) -> None:
        self.path = socket_path(run_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)  # the run's rows: its user's only
        self.path.unlink(missing_ok=True)  # left by a killed run of this directory (we hold its lock)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self._sock.listen(16)
        except OSError:
            self._sock.close()
            raise
        # a cursor made here, in the writer's thread: the reading threads never touch the writer's own
        # connection, so a read never waits for a commit (nor a commit for a read)
        self._base = db.cursor()
        self._mutex = threading.Lock()
        self._active: dict[threading.Thread, duckdb.DuckDBPyConnection | None] = {}
        self._closing = False
        self._thread = threading.Thread(target=self._accept, name="synth-live-reads", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed: the store is closing
                return
            worker = threading.Thread(target=self._answer, args=(conn,), name="synth-live-read", daemon=True)
            with self._mutex:
                if self._closing:
                    conn.close()
                    return
                self._active[worker] = None
            worker.start()

    def _answer(self, conn: socket.socket) -> None:
        me = threading.current_thread()
        try:
            with conn, conn.makefile("rb") as rfile:
                try:
                    request = json.loads(rfile.readline() or b"{}")
                    columns, rows = self._run(
                        me, str(request.get("sql", "")), list(request.get("args") or [])
                    )
                    answer: dict[str, Any] = {"columns": columns, "rows": rows}
                except Exception as e:  # noqa: BLE001 - every failure goes back to the reader as its error
                    answer = {"error": f"{type(e).__name__}: {e}"}
                with contextlib.suppress(OSError):  # the reader went away
                    conn.sendall(json.dumps(answer, default=str).encode() + b"\n")
        finally:
            with self._mutex:
                self._active.pop(me, None)

    def _run(self, me: threading.Thread, sql: str, args: list[Any]) -> tuple[list[str], list[list[Any]]]:
        with self._mutex:
            if self._closing:
                raise LiveReadError("the run is closing its store")
            cur = self._base.cursor()
            self._active[me] = cur
        try:
            _only_selects(cur, sql)
            result = cur.execute(sql, args)
            columns = [d[0] for d in result.description or []]
            return columns, [list(r) for r in result.fetchmany(MAX_ROWS)]
        finally:
            with self._mutex:
                self._active[me] = None
            cur.close()

    def close(self) -> None:
        with self._mutex:
            self._closing = True
            workers = list(self._active.items())
        for _, cur in workers:  # a long read must not hold the run's close
            if cur is not None:
                with contextlib.suppress(duckdb.Error):
                    cur.interrupt()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._sock.close()
        self._thread.join(timeout=5)
        for worker, _ in workers:
            worker.join(timeout=5)
        self._base.close()
        self.path.unlink(missing_ok=True)


def start(run_dir: Path, db: duckdb.DuckDBPyConnection) -> ReadServer | None:
    if os.environ.get("SYNTH_LIVE_READS", "1") == "0":
        return None
    try:
        return ReadServer(run_dir, db)
    except OSError:
        return None  # no socket here (a read-only temp dir...): the run goes on, unreadable while it runs


def query(run_dir: Path | str, sql: str, args: list[Any] | tuple = ()) -> list[tuple]:
    """Run a read-only query on the store of the run writing ``run_dir`` (rows as tuples, like
    DuckDB's ``fetchall``; at most ``MAX_ROWS``)."""
    path = socket_path(run_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            s.connect(str(path))
            s.sendall(json.dumps({"sql": sql, "args": list(args)}, default=str).encode() + b"\n")
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(1 << 20):
                chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise LiveReadError(
            f"the run writing {run_dir} answers no reads ({e.strerror}: started before live reads, "
            "or with SYNTH_LIVE_READS=0)"
        ) from None
    except OSError as e:
        raise LiveReadError(f"the run writing {run_dir} did not answer: {e}") from None
    answer = json.loads(b"".join(chunks) or b"{}")
    if "error" in answer or "rows" not in answer:
        raise LiveReadError(f"the run writing {run_dir} refused the read: {answer.get('error', 'no answer')}")
    return [tuple(r) for r in answer["rows"]]
