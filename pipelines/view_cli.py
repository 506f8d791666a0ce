"""`synth view RUN [--port N] [--host H]`: a local web page over a run (or a round directory of runs).

The page (``synth/view``) shows the funnel as a picture (live while a run writes: its progress
snapshot), any stage's rows with filters and text search, each row whole (messages, tool calls, code
runs, step labels, scores, the verdict of every stage, provenance), preference pairs side by side, the
score distributions, and a round directory's evaluations by round. Every page is a query on the store;
the viewer never writes it, and listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer


def view(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, or a directory of runs (`synth round`).")],
    port: Annotated[int, typer.Option(help="The port to listen on (0: any free port, printed).")] = 8765,
    host: Annotated[str, typer.Option(help="The address to listen on (0.0.0.0: the network).")] = "127.0.0.1",
) -> None:
    """Serve a local web page over a run: funnel, rows with filters and search, whole records,
    preference pairs side by side, score distributions, rounds' evaluations. Read-only."""
    import uvicorn
    from rich.console import Console

    from pipelines.cli import _fail
    from synth.view.app import create_app
    from synth.view.data import find_runs

    if not run_dir.is_dir():
        _fail(f"{run_dir}: no such run directory")
    runs = find_runs(run_dir)
    if not runs:
        _fail(f"{run_dir}: no run store (synth.duckdb) in it or below it")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        _fail(f"cannot listen on {host}:{port}: {e.strerror} (another --port?)")
    sock.listen(128)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    what = "1 run" if runs == ["."] else f"{len(runs)} runs"
    where = f"http://{shown}:{bound}/"
    Console(stderr=True).print(
        f"synth view: {run_dir} ({what}) at {where} (Ctrl-C to stop)", soft_wrap=True, markup=False
    )
    config = uvicorn.Config(create_app(run_dir, host), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
