"""`synth sandbox ...`: run one file in the sandbox and print the result as one JSON object."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sandboxes.api import BACKENDS, get_backend
from sandboxes.base import Job, Limits, SandboxUnavailable
from sandboxes.languages import LANGUAGES, get_language, language_for_file

app = typer.Typer(help="Run untrusted code with isolation and resource limits.")


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
    timeout: float = typer.Option(10.0, "--timeout", help="Wall-clock limit in seconds."),
    memory: int = typer.Option(512, "--memory", help="Memory limit in MB."),
    backend: str = typer.Option("local", "--backend", help=" or ".join(BACKENDS)),
    stdin: Path | None = typer.Option(None, "--stdin", help="File fed to the program's stdin."),
    unsafe_no_isolation: bool = typer.Option(
        False,
        "--unsafe-no-isolation",
        help="Run without bubblewrap (resource limits only): the program can see this machine.",
    ),
) -> None:
    """Run FILE and print one JSON object; exits 0 whatever the program did."""
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
