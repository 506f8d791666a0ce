"""The convenient entry points: pick a backend by name and run one job or many."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sandboxes.base import Backend, FileContent, Job, Limits, Result
from sandboxes.pool import run_many as _run_many

BACKENDS = ("local", "docker")
_cache: dict[tuple[str, bool], Backend] = {}
_lock = threading.Lock()


def get_backend(name: str = "local", *, unsafe_no_isolation: bool = False) -> Backend:
    """A shared backend instance; raises SandboxUnavailable when it cannot isolate here."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if unsafe_no_isolation and name != "local":
        raise ValueError("unsafe_no_isolation only applies to the local backend")
    key = (name, unsafe_no_isolation)
    with _lock:
        if key not in _cache:
            if name == "local":
                from sandboxes.local import LocalBackend

                _cache[key] = LocalBackend(unsafe_no_isolation=unsafe_no_isolation)
            else:
                from sandboxes.docker_backend import DockerBackend

                _cache[key] = DockerBackend()
        return _cache[key]


def _resolve(backend: str | Backend, unsafe_no_isolation: bool) -> Backend:
    if isinstance(backend, str):
        return get_backend(backend, unsafe_no_isolation=unsafe_no_isolation)
    return backend


def run(
    files: Mapping[str, FileContent] | None = None,
    *,
    language: str | None = None,
    entry: str | None = None,
    command: Sequence[str] | None = None,
    stdin: FileContent = b"",
    limits: Limits | None = None,
    backend: str | Backend = "local",
    unsafe_no_isolation: bool = False,
    sentinel: str | None = None,
) -> Result:
    """Run one program, e.g. `run({"solution.py": src, "test_solution.py": tests},
    language="python", entry="test_solution.py", limits=Limits(timeout_s=10))`; with `sentinel`
    it passes only when it printed that token (see `Job`)."""
    job = Job(
        files=dict(files or {}),
        language=language,
        entry=entry,
        command=command,
        stdin=stdin,
        limits=limits or Limits(),
        sentinel=sentinel,
    )
    return _resolve(backend, unsafe_no_isolation).execute(job)


def run_many(
    jobs: Iterable[Job | Mapping[str, Any]],
    *,
    backend: str | Backend = "local",
    unsafe_no_isolation: bool = False,
    max_workers: int | None = None,
) -> list[Result]:
    """Run jobs concurrently; each is a Job or a dict of Job's fields. Results keep the order.

    Invalid jobs raise before anything runs; a sandbox failure inside one job is reported in
    that job's `Result.error`.
    """
    parsed = [job if isinstance(job, Job) else Job(**job) for job in jobs]
    return _run_many(parsed, _resolve(backend, unsafe_no_isolation), max_workers=max_workers)
