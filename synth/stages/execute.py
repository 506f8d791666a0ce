"""The execution stage kind: a sandbox job per row and a verdict from its result.

Code solutions with their tests, translated programs with their recorded I/O cases, and later math
solutions with Python blocks and tool calls all run the same way: ``job(row)`` says what to run (or
``raise Reject(reason)`` when there is nothing runnable), the base runs the batch's jobs in parallel in
the sandbox, and ``verdict(row, result)`` returns the rejection reason (None: passed). The base writes
the verdict under the stage's one name; ``record`` may turn the row into another before it is written.

A job whose harness checks tests gives it a fresh ``Job.sentinel`` (on stdin) to print after the last
check: a program that exits 0 before that comes back ``incomplete`` (``Result.passed`` is False), so
an early ``sys.exit(0)`` / ``process.exit(0)`` / ``exit`` never counts as passing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandboxes import Job, Limits, Result, run_many
from sandboxes.api import get_backend
from synth.records import Record
from synth.stages.llm import Reject


@dataclass
class Sandbox:
    """Where generated programs run: a sandboxes backend, its limits, how many at once."""

    backend: str = "local"
    unsafe_no_isolation: bool = False
    limits: Limits = field(default_factory=lambda: Limits(timeout_s=10, memory_mb=512))
    max_workers: int | None = None

    def check(self) -> None:
        """Fail now (SandboxUnavailable / ValueError) rather than mark every program 'sandbox_error'."""
        get_backend(self.backend, unsafe_no_isolation=self.unsafe_no_isolation)

    def run(self, jobs: list[Job]) -> list[Result]:
        if not jobs:
            return []
        return run_many(
            jobs,
            backend=self.backend,
            unsafe_no_isolation=self.unsafe_no_isolation,
            max_workers=self.max_workers,
        )


@dataclass(kw_only=True)
class ExecuteStage:
    name: str
    sandbox: Sandbox

    def job(self, item: Any) -> Job:
        """What to run for ``item``; ``raise Reject(reason)`` when there is nothing runnable."""
        raise NotImplementedError

    def verdict(self, item: Any, result: Result) -> str | None:
        """The rejection reason for a finished job (None: it passed)."""
        raise NotImplementedError

    def record(self, item: Any, result: Result | None, reason: str | None, detail: str = "") -> Record:
        """The row written for ``item`` (by default the item itself, verdict appended by the base);
        ``result`` is None when ``job`` rejected it, with the ``Reject``'s ``detail``."""
        return item

    def __call__(self, items: list[Any]) -> list[Record]:
        jobs: list[Job] = []
        runnable: list[int] = []
        early: dict[int, Reject] = {}
        for i, item in enumerate(items):
            try:
                jobs.append(self.job(item))
                runnable.append(i)
            except Reject as r:
                early[i] = r
        results = dict(zip(runnable, self.sandbox.run(jobs), strict=True))
        out = []
        for i, item in enumerate(items):
            if i in early:
                reason, detail, result = early[i].reason, early[i].detail, None
            else:
                result, detail = results[i], ""
                reason = self.verdict(item, result)
            rec = self.record(item, result, reason, detail)
            if reason:
                rec.reject(self.name, reason)
            else:
                rec.keep(self.name)
            out.append(rec)
        return out
