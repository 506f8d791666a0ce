"""Hostile programs (tests/hostile/) run in the local sandbox: each is contained, the host is fine.

Every run names its entry file with a fresh token, so the test can scan the host's /proc for any
process of that run that outlived it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from sandboxes import Limits, Result, run
from sandboxes.cgroups import available as cgroups_available

HOSTILE = Path(__file__).parent / "hostile"
PROJECT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
needs_cgroups = pytest.mark.skipif(
    cgroups_available() is None, reason="no writable pids/memory cgroup (needs root)"
)


def host_pids_with(token: str, prefix: str = "") -> list[int]:
    """Host processes whose command line mentions `token` (and starts with `prefix`)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if token.encode() in cmdline and cmdline.startswith(prefix.encode()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


def run_hostile(name: str, stdin: str = "", unsafe: bool = False, **limits: object) -> tuple[Result, str]:
    token = uuid.uuid4().hex[:12]
    entry = f"{name}_{token}.py"
    source = (HOSTILE / f"{name}.py").read_text()
    result = run(
        {entry: source},
        language="python",
        entry=entry,
        stdin=stdin,
        limits=Limits(**limits),  # type: ignore[arg-type]
        unsafe_no_isolation=unsafe,
    )
    assert result.error is None, result.error
    return result, token


def assert_no_leftovers(token: str) -> None:
    assert host_pids_with(token) == []


@needs_cgroups
def test_fork_bomb_is_capped_and_killed() -> None:
    token = uuid.uuid4().hex[:12]
    entry = f"fork_bomb_{token}.py"
    box: dict[str, Result] = {}
    thread = threading.Thread(
        target=lambda: box.update(
            r=run(
                {entry: (HOSTILE / "fork_bomb.py").read_text()},
                language="python",
                entry=entry,
                limits=Limits(timeout_s=3, max_processes=32),
            )
        )
    )
    thread.start()
    peak, host_ok = 0, True
    while thread.is_alive():
        peak = max(peak, len(host_pids_with(token, prefix="/usr/bin/python3")))
        started = time.monotonic()
        host_ok &= subprocess.run(["true"], timeout=5).returncode == 0
        host_ok &= time.monotonic() - started < 2
        time.sleep(0.05)
    thread.join()
    result = box["r"]
    assert result.timed_out and result.status == "timeout"
    assert 1 < peak <= 32, peak  # the bomb did fork, but never past pids.max
    assert host_ok
    assert result.wall_s < 6
    assert_no_leftovers(token)


def test_memory_bomb_gets_memory_error() -> None:
    result, token = run_hostile("memory_bomb", memory_mb=200)
    assert result.oom and result.status == "oom"
    assert "MemoryError" in result.stderr
    assert result.wall_s < 5
    assert_no_leftovers(token)


@needs_cgroups
def test_memory_bomb_spread_over_processes_hits_the_run_wide_cap() -> None:
    # Six children of 150 MB each pass a 300 MB RLIMIT_AS one by one; the cgroup stops them.
    result, token = run_hostile("memory_bomb_forked", memory_mb=300, disk_mb=16, timeout_s=10)
    assert result.oom
    statuses = json.loads(result.stdout)
    assert -9 in statuses, statuses  # some children were OOM-killed
    assert_no_leftovers(token)


def test_infinite_loop_hits_wall_clock() -> None:
    result, token = run_hostile("busy_loop", timeout_s=1)
    assert result.timed_out and result.status == "timeout"
    assert 1 <= result.wall_s < 3
    assert result.cpu_s > 0.5  # it really spun, and the CPU was accounted for
    assert_no_leftovers(token)


def test_cpu_limit_stops_a_loop_before_the_wall_clock() -> None:
    result, token = run_hostile("busy_loop", timeout_s=8, cpu_s=1)
    assert result.timed_out
    assert result.wall_s < 4
    assert_no_leftovers(token)


def test_sleeping_program_is_killed_at_the_deadline() -> None:
    result, token = run_hostile("sleeper", timeout_s=1)
    assert result.timed_out and result.wall_s < 3
    assert_no_leftovers(token)


def test_output_flood_is_cut_and_stopped() -> None:
    result, token = run_hostile("output_flood", max_output_bytes=50_000, timeout_s=10)
    assert result.output_truncated and result.status == "output_limit"
    assert 0 < len(result.stdout) <= 50_000
    assert len(result.stderr) <= 50_000
    assert result.wall_s < 3  # stopped at the cap, not at the timeout
    assert_no_leftovers(token)


def test_disk_fill_stops_at_the_tmpfs_size() -> None:
    free_before = shutil.disk_usage("/tmp").free
    result, token = run_hostile("disk_fill", disk_mb=16, max_file_mb=64, timeout_s=20)
    report = json.loads(result.stdout)
    for target in ("/work", "/tmp"):
        assert report[target]["errno"] == 28, report  # ENOSPC
        assert report[target]["written_mb"] <= 16
    assert report["/dev/shm"]["errno"] == 28
    assert shutil.disk_usage("/tmp").free > free_before - 64 * 2**20
    assert_no_leftovers(token)


def test_file_size_limit() -> None:
    result, _ = run_hostile("disk_fill", disk_mb=64, max_file_mb=4, timeout_s=20)
    assert json.loads(result.stdout)["/work"]["errno"] == 27  # EFBIG


def test_network_is_unreachable_even_to_a_host_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        # Positive control: the listener is reachable from the host itself.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        listener.accept()[0].close()
        result, _ = run_hostile("network", stdin=str(port))
        with pytest.raises(BlockingIOError):
            listener.accept()
    report = json.loads(result.stdout)
    assert set(report) == {"host_listener", "internet", "dns"}
    assert all(value.startswith("blocked") for value in report.values()), report


def test_secrets_in_the_environment_and_files_are_invisible(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = f"sk-fake-{uuid.uuid4().hex}"
    monkeypatch.setenv("SYNTH_FAKE_API_TOKEN", secret)
    own_file = "visible.txt"
    paths = ["/root", str(PROJECT), str(PROJECT / "pyproject.toml"), "/etc/shadow", "/home"]
    source = (HOSTILE / "read_secrets.py").read_text()
    result = run(
        {"read_secrets.py": source, own_file: "mine"},
        language="python",
        entry="read_secrets.py",
        stdin=json.dumps([*paths, f"/work/{own_file}"]),
    )
    assert result.exit_code == 0, result.stderr
    assert secret not in result.stdout
    found = json.loads(result.stdout)
    assert "SYNTH_FAKE_API_TOKEN" not in found["environ"]
    assert found["proc"], "the program should see its own processes"
    for path in paths:
        assert str(found["files"][path]).startswith("blocked"), (path, found["files"][path])
    assert found["files"][f"/work/{own_file}"] == "mine"  # positive control


def test_writes_outside_the_work_dir_fail(tmp_path: Path) -> None:
    outside = ["/", "/usr", "/usr/bin", "/etc", "/root", str(PROJECT), str(tmp_path), "/proc/sys"]
    result, _ = run_hostile("write_outside", stdin=json.dumps([*outside, "/work", "/tmp"]))
    report = json.loads(result.stdout)
    for directory in outside:
        assert report[directory].startswith("blocked"), (directory, report)
        assert not Path(directory, "sandbox-escape-marker").exists()
    assert report["/work"] == report["/tmp"] == "written"  # positive control


def test_signalling_host_processes_fails() -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        result, _ = run_hostile("kill_parent", stdin=json.dumps([victim.pid, os.getpid()]))
        time.sleep(0.1)
        assert victim.poll() is None, "a host process was killed from the sandbox"
        report = json.loads(result.stdout.splitlines()[0])
        assert report[str(victim.pid)].startswith("failed") or victim.pid < 10
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize(
    "unsafe",
    [False, pytest.param(True, marks=needs_cgroups, id="unsafe-with-cgroup")],
    ids=["isolated", None],
)
def test_detached_daemon_dies_with_the_run(unsafe: bool) -> None:
    marker = f"{4_000_000 + uuid.uuid4().int % 1_000_000}.{uuid.uuid4().int % 10**6}"
    seen: list[int] = []
    box: dict[str, Result] = {}

    def target() -> None:
        box["r"] = run_hostile("daemon", stdin=marker, unsafe=unsafe, timeout_s=10)[0]

    thread = threading.Thread(target=target)
    thread.start()
    while thread.is_alive():
        seen += host_pids_with(marker)
        time.sleep(0.02)
    thread.join()
    assert box["r"].stdout.strip() == "parent done"
    assert seen, "the daemon never started, so the test proves nothing"
    time.sleep(0.1)
    assert host_pids_with(marker) == []


def host_zombies() -> int:
    count = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                count += 1
        except (OSError, IndexError):
            continue
    return count


def test_runs_leave_no_zombies_on_the_host() -> None:
    before = host_zombies()
    for name, limits in [("sleeper", {"timeout_s": 0.3}), ("output_flood", {})]:
        run_hostile(name, **limits)
    for _ in range(5):
        assert run({"ok.py": "print(1)"}, language="python", entry="ok.py").passed
    assert host_zombies() <= before
