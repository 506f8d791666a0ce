"""The `docker` backend: one throwaway container per job through the Docker SDK.

Same limits as `local`: no network, read-only root, size-capped tmpfs at /work and /tmp, all
capabilities dropped, no-new-privileges, uid 65534, a memory cgroup without swap, a pids limit,
CPU/file-size/open-file ulimits and a wall-clock timeout after which the container is killed
(its PID namespace goes with it, daemons included).

Files cannot be copied into a tmpfs of a read-only container (`put_archive` writes beneath the
mount), so they travel as a base64 tar in environment variables and a tiny shell unpacks them.
"""

from __future__ import annotations

import base64
import contextlib
import io
import secrets
import tarfile
import threading
import time
from typing import Any

from sandboxes.base import Job, Limits, Result, SandboxUnavailable, settle_sentinel
from sandboxes.languages import Language, get_language

IMAGES = {
    "python": "python:3.11-slim",
    "javascript": "node:20-slim",
    "php": "php:8.2-cli",
    "cpp": "gcc:12",
}
DEFAULT_IMAGE = "python:3.11-slim"  # for plain commands
CHUNK = 100_000  # below the kernel's 128 KiB limit on one environment string
WORK = "/work"
BINARY = "/tmp/prog"

# Unpacks the files, optionally compiles (a failure is flagged with a per-run token on stderr),
# then runs the program with its stdin.
BOOTSTRAP = r"""
set -u
data=""; i=0
while :; do
  eval "part=\${SANDBOX_FILES_$i-_end_}"
  [ "$part" = "_end_" ] && break
  data="$data$part"; unset "SANDBOX_FILES_$i"; i=$((i+1))
done
printf %s "$data" | base64 -d | tar -x -C /work || exit 125
printf %s "${SANDBOX_STDIN:-}" | base64 -d > /tmp/.stdin; unset data part SANDBOX_STDIN
if [ "${1:-}" = "--compile" ]; then
  token=$2; n=$3; shift 3
  (
    i=0
    for a in "$@"; do
      [ "$i" -eq 0 ] && set --
      [ "$i" -lt "$n" ] && set -- "$@" "$a"
      i=$((i+1))
    done
    exec "$@" </dev/null >&2
  ) || { rc=$?; echo "$token $rc" >&2; exit "$rc"; }
  shift "$n"
fi
exec "$@" < /tmp/.stdin
"""


def _tar_b64(files: dict[str, bytes]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return base64.b64encode(buf.getvalue()).decode()


class DockerBackend:
    name = "docker"
    isolated = True

    def __init__(self, images: dict[str, str] | None = None, client: Any = None) -> None:
        self.images = {**IMAGES, **(images or {})}
        self._pulled: set[str] = set()
        self._lock = threading.Lock()
        try:
            import docker

            self.client = client or docker.from_env()
            self.client.ping()
        except Exception as exc:  # the SDK raises several kinds for "no engine"
            raise SandboxUnavailable(f"no Docker engine is reachable: {exc}") from exc

    def execute(self, job: Job) -> Result:
        lang = get_language(job.language) if job.language else None
        image = self.images[lang.name] if lang else DEFAULT_IMAGE
        self._ensure_image(image)
        limits = job.limits
        token = secrets.token_hex(16)
        if lang is None:
            argv = list(job.command or ())
        else:
            entry = job.entry or ""
            argv = lang.render(lang.run, tool=lang.tool, entry=entry, binary=BINARY, limits=limits)
            if lang.compile is not None:
                climits = limits.for_compile()
                compile_argv = lang.render(
                    lang.compile, tool=lang.tool, entry=entry, binary=BINARY, limits=climits
                )
                argv = ["--compile", token, str(len(compile_argv)), *compile_argv, *argv]
        timeout = limits.timeout_s + (limits.compile_timeout_s if lang and lang.compile else 0)
        result = self._run_container(image, argv, job, timeout, lang)
        marker = f"{token} "
        if marker in result.stderr:
            result.compile_error = True
            result.stderr = result.stderr.replace(marker + str(result.exit_code) + "\n", "")
        return settle_sentinel(job, result)

    def _ensure_image(self, image: str) -> None:
        import docker.errors

        with self._lock:
            if image in self._pulled:
                return
            try:
                self.client.images.get(image)
            except docker.errors.ImageNotFound:
                self.client.images.pull(image)
            self._pulled.add(image)

    def _run_container(
        self, image: str, argv: list[str], job: Job, timeout: float, lang: Language | None
    ) -> Result:
        import docker.errors
        from docker.types import Ulimit

        limits: Limits = job.limits
        payload = _tar_b64(job.file_bytes)
        env = {
            f"SANDBOX_FILES_{i}": payload[o : o + CHUNK] for i, o in enumerate(range(0, len(payload), CHUNK))
        }
        env["SANDBOX_STDIN"] = base64.b64encode(job.stdin_bytes).decode()
        env.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=WORK, LANG="C.UTF-8")
        memory = limits.memory_mb + (limits.compile_memory_mb if lang and lang.compile else 0)
        tmpfs_opts = f"size={limits.disk_mb}m,mode=1777,exec"
        container = self.client.containers.create(
            image,
            command=["/bin/sh", "-c", BOOTSTRAP, "sandbox", *argv],
            environment=env,
            working_dir=WORK,
            user="65534:65534",
            network_disabled=True,
            network_mode="none",
            read_only=True,
            tmpfs={WORK: tmpfs_opts, "/tmp": tmpfs_opts},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=f"{memory}m",
            memswap_limit=f"{memory}m",
            pids_limit=limits.max_processes,
            nano_cpus=1_000_000_000,
            ulimits=[
                Ulimit(name="cpu", soft=limits.cpu_seconds, hard=limits.cpu_seconds + 1),
                Ulimit(name="fsize", soft=limits.max_file_mb << 20, hard=limits.max_file_mb << 20),
                Ulimit(name="nofile", soft=limits.max_open_files, hard=limits.max_open_files),
                Ulimit(name="core", soft=0, hard=0),
            ],
            init=True,
            log_config={"type": "json-file", "config": {"max-size": f"{4 * limits.max_output_bytes}"}},
        )
        start = time.monotonic()
        timed_out = False
        try:
            container.start()
            try:
                status = container.wait(timeout=timeout)
                exit_code = int(status.get("StatusCode", -1))
            except Exception:  # requests' ReadTimeout / ConnectionError: the wall clock ran out
                timed_out = True
                container.kill()
                exit_code = 137
            wall = time.monotonic() - start
            cap = limits.max_output_bytes
            stdout = container.logs(stdout=True, stderr=False) or b""
            stderr = container.logs(stdout=False, stderr=True) or b""
            container.reload()
            state = container.attrs.get("State", {})
        finally:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        oom = bool(state.get("OOMKilled")) or (
            exit_code != 0
            and lang is not None
            and any(m in stderr.decode("utf-8", "replace") for m in lang.oom_markers)
        )
        return Result(
            exit_code=exit_code,
            stdout=stdout[:cap].decode("utf-8", "replace"),
            stderr=stderr[:cap].decode("utf-8", "replace"),
            timed_out=timed_out or exit_code == 128 + 24,
            oom=oom and not timed_out,
            wall_s=round(wall, 4),
            cpu_s=0.0,  # not exposed after the container is gone
            output_truncated=len(stdout) > cap or len(stderr) > cap,
            backend=self.name,
            isolated=True,
            language=lang.name if lang else None,
        )
