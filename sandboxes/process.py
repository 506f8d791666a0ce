"""Start a process held at a gate, confine it, release it, and collect capped output.

Limits must be in place before the untrusted code runs, but `preexec_fn` is unsafe with threads
(the pool runs many executions at once). So the child starts blocked on a pipe (bwrap's
--block-fd, or a tiny shell for the unisolated mode); while it waits we move it into its cgroup
and set its rlimits with prlimit(2); then we let it go. Its descendants inherit both.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import selectors
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sandboxes.base import Limits
from sandboxes.cgroups import Cgroup

MB = 1024 * 1024
READ_CHUNK = 65536
DRAIN_GRACE_S = 0.5  # how long to wait for pipes after the program is gone


@dataclass
class Outcome:
    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    oom_killed: bool = False
    output_truncated: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    start_error: str | None = None


@dataclass
class Gate:
    """How to hold a freshly started child until it is confined."""

    argv: list[str]
    child_fds: list[int] = field(default_factory=list)
    release_fd: int = -1
    info_fd: int = -1  # bwrap --info-fd: tells us the pid of the sandbox's init

    @classmethod
    def bwrap(cls, bwrap_args: Sequence[str], command: Sequence[str]) -> Gate:
        block_r, block_w = os.pipe()
        info_r, info_w = os.pipe()
        argv = [
            *bwrap_args,
            "--info-fd",
            str(info_w),
            "--block-fd",
            str(block_r),
            "--",
            *command,
        ]
        return cls(argv, [block_r, info_w], block_w, info_r)

    @classmethod
    def shell(cls, command: Sequence[str]) -> Gate:
        block_r, block_w = os.pipe()
        script = 'read -r -u "$0" _ || exit 125; eval "exec $0<&-"; exec "$@"'
        argv = ["/bin/bash", "--norc", "--noprofile", "-c", script, str(block_r), *command]
        return cls(argv, [block_r], block_w)

    def extra_pids(self) -> list[int]:
        """Pids besides the direct child that must be confined (bwrap's sandbox init)."""
        if self.info_fd < 0:
            return []
        data = b""
        while select.select([self.info_fd], [], [], 10.0)[0]:
            chunk = os.read(self.info_fd, 4096)
            if not chunk:
                break
            data += chunk
            with contextlib.suppress(ValueError):
                return [int(json.loads(data)["child-pid"])]
        return []

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.release_fd, b"\n")

    def close(self) -> None:
        for fd in (*self.child_fds, self.release_fd, self.info_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.child_fds, self.release_fd, self.info_fd = [], -1, -1


def _rlimits(limits: Limits, headroom_mb: int) -> list[tuple[int, int]]:
    address_space = (limits.memory_mb + headroom_mb) * MB
    cpu = limits.cpu_seconds
    return [
        (resource.RLIMIT_AS, address_space),
        (resource.RLIMIT_CPU, cpu),  # SIGXCPU at the soft limit, SIGKILL a second later
        (resource.RLIMIT_FSIZE, limits.max_file_mb * MB),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_CORE, 0),
    ]


def _confine(pid: int, limits: Limits, headroom_mb: int, cgroup: Cgroup | None) -> None:
    if cgroup is not None:
        cgroup.add(pid)
    for which, value in _rlimits(limits, headroom_mb):
        hard = value + 1 if which == resource.RLIMIT_CPU else value
        resource.prlimit(pid, which, (value, hard))


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class _Killer:
    """Kills a run's whole tree, innermost first.

    With bwrap, killing the sandbox's PID 1 tears down its PID namespace (every process in it,
    detached or not, dies) and lets the outer bwrap reap it and exit normally, so nothing is
    orphaned. The cgroup, when present, catches everything else; the outer process itself is
    only killed if it fails to exit (`escalate`).
    """

    def __init__(self, proc: subprocess.Popen[bytes], pids: list[int], cgroup: Cgroup | None):
        self.proc = proc
        self.cgroup = cgroup
        self.pidfds: list[int] = []
        for pid in pids:
            with contextlib.suppress(OSError):
                self.pidfds.append(os.pidfd_open(pid))

    def kill(self) -> None:
        inner = self.pidfds[1:] if len(self.pidfds) > 1 else self.pidfds
        for fd in inner:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        if len(self.pidfds) <= 1:  # unisolated: the program leads its own process group
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill_all(ignore={self.proc.pid} if len(self.pidfds) > 1 else set())

    def escalate(self) -> None:
        for fd in self.pidfds[:1]:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)

    def close(self) -> None:
        for fd in self.pidfds:
            os.close(fd)
        self.pidfds = []


def run_confined(
    gate: Gate,
    *,
    limits: Limits,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    headroom_mb: int = 0,
) -> Outcome:
    """Run `gate.argv` under `limits`; always returns, never leaves a process behind."""
    cgroup = Cgroup.create(limits.max_processes, (limits.memory_mb + 2 * limits.disk_mb) * MB)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            gate.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else {},
            cwd=cwd,
            pass_fds=(*gate.child_fds, *pass_fds),
            start_new_session=True,
        )
    except OSError as exc:
        gate.close()
        if cgroup is not None:
            cgroup.close()
        return Outcome(exit_code=127, start_error=f"cannot start {gate.argv[0]}: {exc}")
    for fd in gate.child_fds:
        os.close(fd)
    gate.child_fds = []
    killer: _Killer | None = None
    try:
        pids = [proc.pid, *gate.extra_pids()]
        killer = _Killer(proc, pids, cgroup)
        try:
            # Everything untrusted descends from the innermost pid; the outer bwrap only waits,
            # and each cgroup move costs about a millisecond.
            _confine(pids[-1], limits, headroom_mb, cgroup)
        except (OSError, ValueError) as exc:
            killer.kill()
            killer.escalate()
            proc.wait()
            return Outcome(exit_code=125, start_error=f"cannot confine the sandbox: {exc}")
        gate.release()
        gate.close()
        outcome = _collect(proc, killer, stdin, limits, start)
        if cgroup is not None:
            outcome.oom_killed = cgroup.oom_killed()
            # rusage does not add up through bwrap's processes; the cgroup counts everything.
            cpu = cgroup.cpu_seconds()
            outcome.cpu_s = cpu if cpu is not None else outcome.cpu_s
        return outcome
    finally:
        gate.close()
        if killer is not None:
            if proc.returncode is None:  # only on an unexpected exception
                killer.kill()
                killer.escalate()
            killer.close()
        if proc.returncode is None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if cgroup is not None:
            cgroup.close()


def _collect(
    proc: subprocess.Popen[bytes], killer: _Killer, stdin: bytes, limits: Limits, start: float
) -> Outcome:
    """Feed stdin, read both pipes with a cap, and enforce the wall-clock deadline."""
    assert proc.stdin and proc.stdout and proc.stderr
    cap = limits.max_output_bytes
    out = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    received = dict.fromkeys(out, 0)
    timed_out = truncated = exited = False
    kill_deadline = start + limits.timeout_s  # then we kill the tree
    escalate_deadline = float("inf")  # then we kill the outer process too
    drain_deadline = float("inf")  # after exit, how long pipes may stay open

    sel = selectors.DefaultSelector()
    for fd in out:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()

    def stop() -> None:
        nonlocal kill_deadline, escalate_deadline
        killer.kill()
        kill_deadline = float("inf")
        escalate_deadline = time.monotonic() + 1.0

    try:
        while not exited or any(key.fd in out for key in sel.get_map().values()):
            now = time.monotonic()
            if now >= kill_deadline:
                timed_out = True
                stop()
            if now >= escalate_deadline:
                killer.escalate()
                escalate_deadline = float("inf")
            if now >= drain_deadline:
                break
            wait = min(kill_deadline, escalate_deadline, drain_deadline) - now
            for key, _ in sel.select(timeout=min(max(wait, 0.0), 1.0)):
                fd = key.fd
                if fd == pidfd:
                    exited = True
                    sel.unregister(pidfd)
                    # Whatever is left (daemons that detached) dies with the run.
                    killer.kill()
                    kill_deadline = escalate_deadline = float("inf")
                    drain_deadline = time.monotonic() + DRAIN_GRACE_S
                elif fd == stdin_fd:
                    try:
                        pending = pending[os.write(fd, pending[:READ_CHUNK]) :]
                    except OSError:  # the program closed stdin or exited
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
                else:
                    chunk = os.read(fd, READ_CHUNK)
                    if not chunk:
                        sel.unregister(fd)
                        continue
                    received[fd] += len(chunk)
                    out[fd] += chunk[: max(0, cap - len(out[fd]))]
                    if received[fd] > cap and not truncated:
                        truncated = True
                        stop()
    finally:
        sel.close()
        os.close(pidfd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = _exit_code(status)
    return Outcome(
        exit_code=proc.returncode,
        stdout=bytes(out[proc.stdout.fileno()]),
        stderr=bytes(out[proc.stderr.fileno()]),
        timed_out=timed_out,
        output_truncated=truncated,
        wall_s=time.monotonic() - start,
        cpu_s=usage.ru_utime + usage.ru_stime,  # the cgroup's figure replaces it when present
        max_rss_mb=usage.ru_maxrss / 1024,
    )
