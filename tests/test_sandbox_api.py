"""The sandbox API's contracts: validation, JSON results, refusal without bwrap, unsafe mode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sandboxes import Job, Limits, Result, SandboxUnavailable, get_backend, language_for_file, run
from sandboxes.local import LocalBackend

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=-1)
    assert Limits(timeout_s=2.2).cpu_seconds == 3
    assert Limits(timeout_s=10, cpu_s=1).cpu_seconds == 1


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape.py", "a/../../b", ""])
def test_file_names_must_stay_in_the_work_dir(name: str) -> None:
    with pytest.raises(ValueError, match="relative"):
        Job(files={name: "x"}, command=["true"]).file_bytes  # noqa: B018


def test_job_needs_language_or_command() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Job(files={"a.py": ""})
    with pytest.raises(ValueError, match="entry"):
        Job(files={"a.py": ""}, language="python")
    with pytest.raises(ValueError, match="unknown language"):
        run({"a.rb": ""}, language="ruby", entry="a.rb", unsafe_no_isolation=True)


def test_language_inference() -> None:
    assert language_for_file("x.py").name == "python"
    assert language_for_file("x.mjs").name == "javascript"
    assert language_for_file("x.php").name == "php"
    assert language_for_file("x.cc").name == "cpp"
    with pytest.raises(ValueError, match="--lang"):
        language_for_file("x.rb")


def test_result_is_json_serialisable_with_status() -> None:
    result = Result(exit_code=0, stdout="ok\n", wall_s=0.1)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["status"] == "ok" and data["passed"] is True and data["stdout"] == "ok\n"
    assert Result(exit_code=0, timed_out=True).status == "timeout"
    assert Result(exit_code=1, compile_error=True).status == "compile_error"
    assert Result(exit_code=3).status == "failed"


def test_missing_bwrap_is_refused_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap anywhere on it
    with pytest.raises(SandboxUnavailable, match="bubblewrap.*--unsafe-no-isolation"):
        LocalBackend()
    with pytest.raises(SandboxUnavailable):
        LocalBackend(bwrap=str(tmp_path / "bwrap"))


def test_unsafe_mode_runs_with_limits_only() -> None:
    backend = LocalBackend(unsafe_no_isolation=True, bwrap="/nonexistent")
    assert backend.isolated is False
    ok = run({"a.py": "import os; print(os.getcwd())"}, language="python", entry="a.py", backend=backend)
    assert ok.passed and not ok.isolated and ok.stdout.startswith("/tmp/")
    assert not Path(ok.stdout.strip()).exists()  # the throwaway work dir is gone
    looping = run(
        {"a.py": "while True: pass"},
        language="python",
        entry="a.py",
        limits=Limits(timeout_s=1),
        backend=backend,
    )
    assert looping.timed_out and looping.wall_s < 3
    hungry = run(
        {"a.py": "x = bytearray(400 * 2**20)"},
        language="python",
        entry="a.py",
        limits=Limits(memory_mb=128),
        backend=backend,
    )
    assert hungry.oom and "MemoryError" in hungry.stderr


@needs_bwrap
def test_get_backend_is_shared_and_isolated() -> None:
    backend = get_backend("local")
    assert backend is get_backend("local") and backend.isolated
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("firecracker")


@needs_bwrap
def test_program_sees_a_minimal_system() -> None:
    src = """
import os, json
print(json.dumps({"uid": os.getuid(), "cwd": os.getcwd(), "root": sorted(os.listdir("/")),
                  "env": sorted(os.environ), "usr_local": os.listdir("/usr/local"),
                  "pid": os.getpid(), "hostname": os.uname().nodename}))
"""
    result = run({"probe.py": src}, language="python", entry="probe.py")
    info = json.loads(result.stdout)
    assert info["uid"] == 65534 and info["cwd"] == "/work" and info["hostname"] == "sandbox"
    assert set(info["root"]) <= {"bin", "dev", "etc", "lib", "lib64", "proc", "sbin", "tmp", "usr", "work"}
    assert set(info["env"]) <= {"HOME", "LANG", "PATH", "PWD", "TMPDIR", "USER", "LC_CTYPE"}
    assert info["usr_local"] == [] and info["pid"] < 10
