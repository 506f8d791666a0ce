"""The `local` backend: bubblewrap namespaces plus rlimits and a cgroup, on this machine.

Inside the sandbox the program sees a read-only /usr (with /bin, /lib, /lib64 as links into it),
a fresh /proc and minimal /dev, size-capped tmpfs at /work (its files, the cwd) and /tmp, and a
synthetic /etc/passwd. Nothing else of the host: no /root, no /home, no project, no /usr/local,
no network, no host PIDs, an empty environment. It runs as uid 65534 in its own user namespace
with every capability dropped. With `unsafe_no_isolation=True` the same limits apply but the
program runs as a plain child in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

from sandboxes.base import Job, Limits, Result, SandboxUnavailable, settle_sentinel
from sandboxes.languages import Language, get_language
from sandboxes.process import MB, Gate, Outcome, run_confined

WORK = "/work"
BUILD = "/build"  # where a compiled program is written (a host temp dir bound into the sandbox)
BINARY = "prog"
SYSTEM = "/usr"
PATH = "/usr/bin:/bin"
PASSWD = b"nobody:x:65534:65534:nobody:/work:/usr/sbin/nologin\n"
GROUP = b"nogroup:x:65534:\n"
# PID 1 of the sandbox: a shell that waits for the program and reaps orphans. bwrap's own init
# reports the exit through an eventfd and returns without reaping itself, which leaks a zombie
# per run onto the host's PID 1; with --as-pid-1 the outer bwrap always reaps. When this shell
# exits, the kernel kills everything left in the namespace.
INIT = ["/bin/sh", "-c", '"$@"; exit $?', "sandbox-init"]

NO_BWRAP = (
    "bubblewrap (`bwrap`) is not installed, so untrusted code cannot be isolated here. "
    "Install it (Debian/Ubuntu: `apt-get install -y bubblewrap`), use the docker backend, or "
    "pass unsafe_no_isolation=True (CLI: --unsafe-no-isolation) to run with resource limits "
    "only, which gives the program access to this machine's files and processes."
)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _memfd(name: str, content: bytes) -> int:
    """An anonymous in-memory file for bwrap to copy into the sandbox (no host disk involved)."""
    fd = os.memfd_create(name, 0)
    os.write(fd, content)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class LocalBackend:
    """Runs jobs on this machine; safe to share between threads."""

    name = "local"

    def __init__(self, *, unsafe_no_isolation: bool = False, bwrap: str | None = None) -> None:
        self.isolated = not unsafe_no_isolation
        self.bwrap = bwrap or shutil.which("bwrap") or ""
        if self.isolated and not (self.bwrap and os.access(self.bwrap, os.X_OK)):
            raise SandboxUnavailable(NO_BWRAP)
        self._tools: dict[str, str] = {}
        self._lock = threading.Lock()
        if self.isolated:
            self._self_check()

    # -- public -------------------------------------------------------------------------

    def execute(self, job: Job) -> Result:
        return settle_sentinel(job, self._execute(job))

    def _execute(self, job: Job) -> Result:
        files = job.file_bytes
        lang = get_language(job.language) if job.language else None
        if lang is None:
            outcome = self._run(list(job.command or ()), files, job.stdin_bytes, job.limits)
            return self._result(outcome, None, job.limits)
        tool = self.tool_path(lang.tool)
        if lang.compile is None:
            argv = lang.render(lang.run, tool=tool, entry=job.entry or "", binary="", limits=job.limits)
            outcome = self._run(argv, files, job.stdin_bytes, job.limits, lang.address_space_headroom_mb)
            return self._result(outcome, lang, job.limits)
        return self._compile_and_run(job, lang, tool, files)

    def tool_path(self, name: str) -> str:
        """Absolute path of an interpreter or compiler that the sandbox can see (under /usr)."""
        with self._lock:
            if name in self._tools:
                return self._tools[name]
        found = shutil.which(name, path=PATH)
        real = os.path.realpath(found) if found else ""
        if not real.startswith(SYSTEM + "/") or not os.access(real, os.X_OK):
            raise SandboxUnavailable(
                f"`{name}` was not found under {SYSTEM}/bin; the sandbox only mounts {SYSTEM}, "
                f"so install the system package that provides it (e.g. with apt-get)."
            )
        with self._lock:
            self._tools[name] = real
        return real

    # -- internals ----------------------------------------------------------------------

    def _self_check(self) -> None:
        """Start one empty sandbox so a broken bwrap fails loudly here, not per job."""
        outcome = self._run(["/usr/bin/true"], {}, b"", Limits(timeout_s=10))
        if outcome.exit_code != 0 or outcome.start_error:
            detail = outcome.start_error or _decode(outcome.stderr).strip()
            raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here: {detail}")

    def _compile_and_run(self, job: Job, lang: Language, tool: str, files: dict[str, bytes]) -> Result:
        assert lang.compile is not None and job.entry
        with tempfile.TemporaryDirectory(prefix="synth-sandbox-build-") as build:
            os.chmod(build, 0o777)  # the sandbox user (nobody) writes the binary here
            binary = f"{BUILD}/{BINARY}" if self.isolated else os.path.join(build, BINARY)
            climits = job.limits.for_compile()
            argv = lang.render(lang.compile, tool=tool, entry=job.entry, binary=binary, limits=climits)
            compiled = self._run(argv, files, b"", climits, build_dir=build, build_writable=True)
            if compiled.exit_code != 0 or compiled.timed_out or compiled.start_error:
                result = self._result(compiled, lang, climits)
                result.compile_error = not compiled.start_error
                result.compile_wall_s = compiled.wall_s
                return result
            argv = lang.render(lang.run, tool=tool, entry=job.entry, binary=binary, limits=job.limits)
            outcome = self._run(
                argv,
                files,
                job.stdin_bytes,
                job.limits,
                lang.address_space_headroom_mb,
                build_dir=build,
            )
        result = self._result(outcome, lang, job.limits)
        result.compile_wall_s = compiled.wall_s
        return result

    def _run(
        self,
        argv: list[str],
        files: dict[str, bytes],
        stdin: bytes,
        limits: Limits,
        headroom_mb: int = 0,
        *,
        build_dir: str | None = None,
        build_writable: bool = False,
    ) -> Outcome:
        if not argv:
            raise ValueError("empty command")
        if self.isolated:
            return self._run_bwrap(argv, files, stdin, limits, headroom_mb, build_dir, build_writable)
        return self._run_unisolated(argv, files, stdin, limits, headroom_mb, build_dir)

    def _run_bwrap(
        self,
        argv: list[str],
        files: dict[str, bytes],
        stdin: bytes,
        limits: Limits,
        headroom_mb: int,
        build_dir: str | None,
        build_writable: bool,
    ) -> Outcome:
        fds: list[int] = []
        try:
            args = self._bwrap_args(limits)
            for dest, content in (("/etc/passwd", PASSWD), ("/etc/group", GROUP)):
                fds.append(_memfd("etc", content))
                args += ["--ro-bind-data", str(fds[-1]), dest]
            for name, content in files.items():
                fds.append(_memfd("file", content))
                args += ["--file", str(fds[-1]), f"{WORK}/{name}"]
            if build_dir is not None:
                args += ["--bind" if build_writable else "--ro-bind", build_dir, BUILD]
            # bwrap's root is a tmpfs the sandbox user owns: freeze it once everything is in.
            args += ["--remount-ro", "/", "--chdir", WORK]
            gate = Gate.bwrap(args, [*INIT, *argv])
            return run_confined(
                gate, limits=limits, stdin=stdin, env={}, pass_fds=fds, headroom_mb=headroom_mb
            )
        finally:
            for fd in fds:
                os.close(fd)

    def _bwrap_args(self, limits: Limits) -> list[str]:
        disk = str(limits.disk_mb * MB)
        # fmt: off
        return [
            self.bwrap,
            "--unshare-all", "--unshare-user", "--disable-userns",
            "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
            "--cap-drop", "ALL", "--clearenv", "--die-with-parent", "--new-session",
            "--as-pid-1",
            "--ro-bind", SYSTEM, SYSTEM,
            # /usr/local holds site-installed tools and configuration: hide it.
            "--perms", "0755", "--tmpfs", f"{SYSTEM}/local", "--remount-ro", f"{SYSTEM}/local",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(16 * MB), "--tmpfs", "/dev/shm",
            "--perms", "1777", "--size", disk, "--tmpfs", "/tmp",
            "--perms", "1777", "--size", disk, "--tmpfs", WORK,
            "--setenv", "PATH", PATH, "--setenv", "HOME", WORK, "--setenv", "TMPDIR", "/tmp",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "USER", "nobody",
        ]
        # fmt: on

    def _run_unisolated(
        self,
        argv: list[str],
        files: dict[str, bytes],
        stdin: bytes,
        limits: Limits,
        headroom_mb: int,
        build_dir: str | None,
    ) -> Outcome:
        with tempfile.TemporaryDirectory(prefix="synth-sandbox-work-") as work:
            for name, content in files.items():
                path = Path(work, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            env = {"PATH": PATH, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
            outcome = run_confined(
                Gate.shell(argv), limits=limits, stdin=stdin, env=env, cwd=work, headroom_mb=headroom_mb
            )
            with contextlib.suppress(OSError):  # the program may have made its files read-only
                shutil.rmtree(work, ignore_errors=True)
            return outcome

    def _result(self, outcome: Outcome, lang: Language | None, limits: Limits) -> Result:
        stderr = _decode(outcome.stderr)
        oom = outcome.oom_killed or (
            outcome.exit_code != 0
            and lang is not None
            and any(marker in stderr for marker in lang.oom_markers)
        )
        # SIGXCPU (152) is the CPU-time limit; SIGKILL with the CPU budget spent is its hard limit.
        cpu_killed = outcome.exit_code == 128 + 24 or (
            outcome.exit_code == 128 + 9 and outcome.cpu_s >= limits.cpu_seconds
        )
        return Result(
            exit_code=outcome.exit_code,
            stdout=_decode(outcome.stdout),
            stderr=stderr,
            timed_out=outcome.timed_out or cpu_killed,
            oom=oom and not outcome.timed_out,
            wall_s=round(outcome.wall_s, 4),
            cpu_s=round(outcome.cpu_s, 4),
            max_rss_mb=round(outcome.max_rss_mb, 1),
            output_truncated=outcome.output_truncated,
            error=outcome.start_error,
            backend=self.name,
            isolated=self.isolated,
            language=lang.name if lang else None,
        )
