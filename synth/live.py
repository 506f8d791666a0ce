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
import socketserver
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
    """Where the run writing ``run_dir`` listens (short: a Unix socket path has at most 107 bytes)."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"synth-{os.getuid()}"
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:24]
    return base / f"{digest}.sock"


def _only_selects(db: duckdb.DuckDBPyConnection, sql: str) -> None:
    statements = db.extract_statements(sql)
    if not statements:
        raise PermissionError("no statement")
    for st in statements:
        if st.type != duckdb.StatementType.SELECT:
            raise PermissionError(f"read-only: {st.type.name} statements are refused")


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            request = json.loads(self.rfile.readline() or b"{}")
            columns, rows = self.server.run(str(request.get("sql", "")), list(request.get("args") or []))
            answer: dict[str, Any] = {"columns": columns, "rows": rows}
        except Exception as e:  # noqa: BLE001 - every failure goes back to the reader as its error
            answer = {"error": f"{type(e).__name__}: {e}"}
        with contextlib.suppress(OSError):  # the reader went away
            self.wfile.write(json.dumps(answer, default=str).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: Path, base: duckdb.DuckDBPyConnection) -> None:
        self.base = base  # a cursor of the writer's database, used by this server's threads only
        self.mutex = threading.Lock()
        self.active: set[duckdb.DuckDBPyConnection] = set()
        self.closing = False
        super().__init__(str(path), _Handler)

    def run(self, sql: str, args: list[Any]) -> tuple[list[str], list[list[Any]]]:
        with self.mutex:
            if self.closing:
                raise LiveReadError("the run is closing its store")
            cur = self.base.cursor()
            self.active.add(cur)
        try:
            _only_selects(cur, sql)
            result = cur.execute(sql, args)
            columns = [d[0] for d in result.description or []]
            rows = [list(r) for r in result.fetchmany(MAX_ROWS)]
            return columns, rows
        finally:
            with self.mutex:
                self.active.discard(cur)
            cur.close()


class ReadServer:
    """The socket a writing store answers reads on (started by ``Store``; ``SYNTH_LIVE_READS=0`` turns
    it off)."""

    def __init__(self, run_dir: Path, db: duckdb.DuckDBPyConnection) -> None:
        self.path = socket_path(run_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)  # the run's rows: its user's only
        self.path.unlink(missing_ok=True)  # left by a killed run of this directory (we hold its lock)
        # a cursor made here, in the writer's thread: the server's threads never touch the writer's own
        # connection, so a read never waits for a commit (nor a commit for a read)
        self._server = _Server(self.path, db.cursor())
        os.chmod(self.path, 0o600)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="synth-live-reads", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        srv = self._server
        with srv.mutex:
            srv.closing = True
            for cur in list(srv.active):  # a long read must not hold the run's close
                with contextlib.suppress(duckdb.Error):
                    cur.interrupt()
        srv.shutdown()
        srv.server_close()
        self._thread.join(timeout=5)
        srv.base.close()
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
