"""Run many jobs concurrently, sized to the machine, results in input order.

Each job spends its time in a child process, so threads are enough: the GIL is released while
we wait on pipes. The pool is no wider than the CPUs we may use, nor than the memory that the
jobs' limits could claim at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from sandboxes.base import Backend, Job, Result


def default_workers(jobs: list[Job]) -> int:
    cpus = len(os.sched_getaffinity(0))
    try:
        memory_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    except (ValueError, OSError):
        return cpus
    per_job_mb = max((j.limits.memory_mb + 2 * j.limits.disk_mb for j in jobs), default=1)
    return max(1, min(cpus, memory_mb // 2 // per_job_mb))


def _safe_execute(backend: Backend, job: Job) -> Result:
    """A failure of the sandbox machinery becomes that job's error, not the whole batch's."""
    try:
        return backend.execute(job)
    except Exception as exc:  # reported in the result, the other jobs go on
        return Result(
            exit_code=-1,
            error=f"{type(exc).__name__}: {exc}",
            backend=backend.name,
            isolated=backend.isolated,
            language=job.language,
        )


def run_many(jobs: Iterable[Job], backend: Backend, *, max_workers: int | None = None) -> list[Result]:
    """Execute `jobs` on `backend` in a thread pool; `results[i]` belongs to `jobs[i]`."""
    jobs = list(jobs)
    if not jobs:
        return []
    workers = max_workers or default_workers(jobs)
    if workers == 1 or len(jobs) == 1:
        return [_safe_execute(backend, job) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="sandbox") as ex:
        return list(ex.map(lambda job: _safe_execute(backend, job), jobs))
