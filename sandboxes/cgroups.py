"""Per-run control groups: a process cap against fork bombs and one memory cap for the whole run.

RLIMIT_NPROC does not hold for root (and the sandbox's uid maps to the caller's), so the pids
controller is the only thing that stops a fork bomb. A cgroup also lists every process a run
started, which lets us kill daemons that double-forked out of the process group. Both cgroup v1
(a per-controller hierarchy) and v2 (unified, if we may enable controllers) are supported; when
neither is writable `Cgroup.create` returns None and the caller falls back to namespace teardown.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from functools import cache
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PARENT = "synth-sandbox"
_counter = itertools.count()
_lock = threading.Lock()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _own_path(controller: str) -> str:
    """This process's cgroup path in the hierarchy holding `controller` ('' for v2)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path.lstrip("/")
    return ""


@cache
def _v1_parents() -> dict[str, Path] | None:
    parents = {}
    for controller in ("pids", "memory", "cpuacct"):
        base = ROOT / controller
        if not (base / "cgroup.procs").exists():
            if controller == "cpuacct":  # optional: only for CPU accounting
                continue
            return None
        parent = base / _own_path(controller) / PARENT
        try:
            parent.mkdir(exist_ok=True)
            if controller == "memory":
                # Charge tmpfs and page cache hierarchically, so a run's total counts.
                with contextlib.suppress(OSError):
                    _write(parent / "memory.use_hierarchy", "1")
        except OSError:
            if controller == "cpuacct":
                continue
            return None
        parents[controller] = parent
    return parents


@cache
def _v2_parent() -> Path | None:
    if not (ROOT / "cgroup.controllers").exists():
        return None
    parent = ROOT / PARENT
    try:
        parent.mkdir(exist_ok=True)
        _write(ROOT / "cgroup.subtree_control", "+pids +memory")
        _write(parent / "cgroup.subtree_control", "+pids +memory")
    except OSError:
        return None
    return parent


def available() -> str | None:
    """'v1', 'v2' or None: which kind of per-run cgroup we can create here."""
    if os.geteuid() != 0:
        return None
    if _v1_parents():
        return "v1"
    if _v2_parent():
        return "v2"
    return None


class Cgroup:
    """One run's cgroup(s). Use `create`, then `add` pids, `kill_all` and finally `close`."""

    def __init__(self, dirs: dict[str, Path], version: str) -> None:
        self.dirs = dirs
        self.version = version
        self._oom_base = self._oom_count()

    @classmethod
    def create(cls, max_processes: int, memory_bytes: int) -> Cgroup | None:
        kind = available()
        if kind is None:
            return None
        with _lock:
            name = f"run-{os.getpid()}-{next(_counter)}"
        try:
            if kind == "v1":
                dirs = {c: p / name for c, p in (_v1_parents() or {}).items()}
                for d in dirs.values():
                    d.mkdir()
                _write(dirs["pids"] / "pids.max", str(max_processes))
                _write(dirs["memory"] / "memory.limit_in_bytes", str(memory_bytes))
                if (dirs["memory"] / "memory.memsw.limit_in_bytes").exists():
                    _write(dirs["memory"] / "memory.memsw.limit_in_bytes", str(memory_bytes))
            else:
                d = (_v2_parent() or ROOT) / name
                d.mkdir()
                dirs = {"pids": d, "memory": d, "cpu": d}
                _write(d / "pids.max", str(max_processes))
                _write(d / "memory.max", str(memory_bytes))
                with contextlib.suppress(OSError):
                    _write(d / "memory.swap.max", "0")
        except OSError:
            return None
        return cls(dirs, kind)

    def add(self, pid: int) -> None:
        for d in {id(p): p for p in self.dirs.values()}.values():
            _write(d / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        try:
            text = (self.dirs["pids"] / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def kill_all(self, ignore: set[int] | frozenset[int] = frozenset(), wait_s: float = 2.0) -> None:
        """SIGKILL everything in the cgroup until it is empty (new forks are bounded by pids.max)."""
        deadline = time.monotonic() + wait_s
        while pids := [p for p in self.pids() if p not in ignore]:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)

    def cpu_seconds(self) -> float | None:
        """CPU time of every process the run had, including killed and unreaped ones."""
        try:
            if self.version == "v1":
                if "cpuacct" not in self.dirs:
                    return None
                return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
            for line in (self.dirs["cpu"] / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        except (OSError, ValueError):
            pass
        return None

    def _oom_count(self) -> int:
        d = self.dirs["memory"]
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        try:
            for line in (d / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            pass
        return 0

    def oom_killed(self) -> bool:
        """True if the kernel's OOM killer killed something in this run."""
        return self._oom_count() > self._oom_base

    def close(self) -> None:
        self.kill_all()
        for d in {id(p): p for p in self.dirs.values()}.values():
            for _ in range(50):  # exiting tasks leave the cgroup asynchronously
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
