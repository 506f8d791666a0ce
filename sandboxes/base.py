"""Data types shared by every backend: what to run, under which limits, and what came back."""

from __future__ import annotations

import math
import posixpath
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be provided here; we refuse rather than run unconfined."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one execution.

    `memory_mb` is enforced twice: as RLIMIT_AS per process (a clean MemoryError) and, plus the
    tmpfs budget, as one memory cgroup over the whole run (so N children cannot multiply it).
    `disk_mb` caps each writable tmpfs (/work and /tmp), so a full disk is at most 2 x disk_mb
    of RAM.
    """

    timeout_s: float = 10.0
    cpu_s: float | None = None  # defaults to the wall timeout
    memory_mb: int = 512
    max_output_bytes: int = 256 * 1024  # per stream; a program going past it is stopped
    max_file_mb: int = 64
    disk_mb: int = 128
    max_processes: int = 64
    max_open_files: int = 256
    compile_timeout_s: float = 30.0
    compile_memory_mb: int = 1024

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"Limits.{name} must be a positive finite number, got {value!r}")

    @property
    def cpu_seconds(self) -> int:
        """Whole seconds for RLIMIT_CPU (the kernel only counts whole seconds)."""
        return max(1, math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s))

    def for_compile(self) -> Limits:
        """Limits for a compiler: more time and memory than the program it builds."""
        return Limits(
            timeout_s=self.compile_timeout_s,
            memory_mb=max(self.memory_mb, self.compile_memory_mb),
            max_output_bytes=self.max_output_bytes,
            max_file_mb=self.max_file_mb,
            disk_mb=self.disk_mb,
            max_processes=max(self.max_processes, 16),
            max_open_files=self.max_open_files,
        )


FileContent = str | bytes
SENTINEL_MIN_CHARS = 16


def new_sentinel() -> str:
    """A fresh unguessable token for ``Job.sentinel`` (one per run)."""
    return "synth-done-" + secrets.token_hex(16)


def normalise_files(files: Mapping[str, FileContent] | None) -> dict[str, bytes]:
    """Check that every name stays inside the work dir and encode contents to bytes."""
    out: dict[str, bytes] = {}
    for name, content in (files or {}).items():
        clean = posixpath.normpath(name)
        if not name or clean.startswith(("/", "..")) or clean == "." or "\0" in name:
            raise ValueError(f"file name must be relative and inside the work dir: {name!r}")
        out[clean] = content.encode() if isinstance(content, str) else bytes(content)
    return out


@dataclass(frozen=True)
class Job:
    """One execution: files to place in the work dir and either a language + entry or a command.

    `command` runs as given (argv, relative to the work dir); with `language` the entry file is
    compiled if needed and run with that language's interpreter.

    `sentinel` (from `new_sentinel()`) is proof that a program ran to its end: a test harness prints
    it after its last assertion, so a run that exits 0 early (`sys.exit(0)` before the asserts, on
    import, `os._exit`, `process.exit`, PHP `exit`) is `incomplete`, not passed. Hand it to the
    program on stdin, not in a file it could read; it is removed from the result's stdout.
    """

    files: Mapping[str, FileContent] = field(default_factory=dict)
    language: str | None = None
    entry: str | None = None
    command: Sequence[str] | None = None
    stdin: FileContent = b""
    limits: Limits = field(default_factory=Limits)
    sentinel: str | None = None

    def __post_init__(self) -> None:
        if self.sentinel is not None and (
            len(self.sentinel) < SENTINEL_MIN_CHARS or any(c.isspace() for c in self.sentinel)
        ):
            raise ValueError(
                f"sentinel must be an unguessable token of {SENTINEL_MIN_CHARS}+ characters without "
                "whitespace (use new_sentinel())"
            )
        if (self.language is None) == (self.command is None):
            raise ValueError("give exactly one of `language` (with `entry`) or `command`")
        if self.language is not None and not self.entry:
            raise ValueError("`entry` (the file to run) is required with `language`")
        if self.entry is not None:
            normalise_files({self.entry: b""})

    @property
    def stdin_bytes(self) -> bytes:
        return self.stdin.encode() if isinstance(self.stdin, str) else bytes(self.stdin)

    @property
    def file_bytes(self) -> dict[str, bytes]:
        return normalise_files(self.files)


@dataclass
class Result:
    """What one execution did. Exit codes follow the shell: 128+N means killed by signal N."""

    exit_code: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    oom: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    output_truncated: bool = False
    compile_error: bool = False
    compile_wall_s: float | None = None
    error: str | None = None  # the sandbox itself failed; the program's verdict is unknown
    incomplete: bool = False  # the job had a sentinel and the program never printed it
    backend: str = ""
    isolated: bool = True
    language: str | None = None

    @property
    def status(self) -> str:
        """One word for the outcome, checked in order of what most explains the exit."""
        if self.error:
            return "error"
        if self.compile_error:
            return "compile_error"
        if self.timed_out:
            return "timeout"
        if self.oom:
            return "oom"
        if self.output_truncated:
            return "output_limit"
        if self.exit_code != 0:
            return "failed"
        return "incomplete" if self.incomplete else "ok"

    @property
    def passed(self) -> bool:
        """True when the program ran to completion and exited 0 (e.g. all asserts held); with a
        sentinel, only when it also printed the sentinel."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status, "passed": self.passed}


def settle_sentinel(job: Job, result: Result) -> Result:
    """Check and strip ``job.sentinel`` from the result's stdout (every backend's last step)."""
    if job.sentinel is None:
        return result
    seen = job.sentinel in result.stdout
    if seen:
        result.stdout = result.stdout.replace(job.sentinel + "\n", "").replace(job.sentinel, "")
    result.incomplete = not seen
    return result


class Backend(Protocol):
    """Anything that can execute a Job. Implementations must be safe to call from threads."""

    name: str
    isolated: bool

    def execute(self, job: Job) -> Result: ...
