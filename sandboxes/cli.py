"""`synth sandbox ...`: run one file in the sandbox and print the result as one JSON object."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import typer

from sandboxes.api import BACKENDS, get_backend
from sandboxes.base import Job, Limits, SandboxUnavailable
from sandboxes.languages import LANGUAGES, get_language, language_for_file

app = typer.Typer(help="Run untrusted code with isolation and resource limits.")
MAX_TIMEOUT_S = 24 * 3600.0
MAX_MEMORY_MB = 1024 * 1024


@app.callback()
def main() -> None:
    """Run untrusted code with isolation and resource limits."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def run(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    lang: str | None = typer.Option(
        None, "--lang", help=f"One of {', '.join(LANGUAGES)}; inferred from the extension."
    ),
    timeout: float = typer.Option(
        10.0, "--timeout", help=f"Wall-clock limit in seconds, in (0, {MAX_TIMEOUT_S:g}]."
    ),
    memory: int = typer.Option(512, "--memory", help=f"Memory limit in MB, in [1, {MAX_MEMORY_MB}]."),
    backend: str = typer.Option("local", "--backend", help=" or ".join(BACKENDS)),
    stdin: Path | None = typer.Option(None, "--stdin", help="File fed to the program's stdin."),
    unsafe_no_isolation: bool = typer.Option(
        False,
        "--unsafe-no-isolation",
        help="Run without bubblewrap (resource limits only): the program can see this machine.",
    ),
) -> None:
    """Run FILE and print one JSON object; exits 0 whatever the program did.

    A FILE whose name starts with `-` is fine after `--` or as `./-x.py`."""
    if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT_S):
        _fail(f"--timeout must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {timeout}")
    if not 1 <= memory <= MAX_MEMORY_MB:
        _fail(f"--memory must be in [1, {MAX_MEMORY_MB}] MB, got {memory}")
    try:
        language = get_language(lang) if lang else language_for_file(file.name)
        limits = Limits(timeout_s=timeout, memory_mb=memory)
        job = Job(
            files={file.name: file.read_bytes()},
            language=language.name,
            entry=file.name,
            stdin=stdin.read_bytes() if stdin else b"",
            limits=limits,
        )
        sandbox = get_backend(backend, unsafe_no_isolation=unsafe_no_isolation)
    except (ValueError, OSError, SandboxUnavailable) as exc:
        _fail(str(exc))
        return
    result = sandbox.execute(job)
    sys.stdout.write(json.dumps(result.to_dict()) + "\n")


@app.command()
def check(
    backend: str = typer.Option("local", "--backend", help=" or ".join(BACKENDS)),
) -> None:
    """Say whether BACKEND can isolate code on this machine (exit 1 if not)."""
    try:
        get_backend(backend)
    except SandboxUnavailable as exc:
        typer.echo(f"{backend}: unavailable: {exc}")
        raise typer.Exit(1) from exc
    typer.echo(f"{backend}: available")
    if backend == "local":
        from sandboxes.cgroups import available

        kind = available()
        typer.echo(
            f"cgroups: {kind} (process and memory caps per run)"
            if kind
            else "cgroups: unavailable (a fork bomb is only stopped by the timeout)"
        )
