"""The docker backend, when an engine is reachable (skipped with the reason otherwise)."""

from __future__ import annotations

import json

import pytest

from sandboxes import Limits, SandboxUnavailable, get_backend, run


@pytest.fixture(scope="module")
def docker_backend():
    try:
        return get_backend("docker")
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))


def test_python_tests_pass_and_fail(docker_backend) -> None:
    files = {"solution.py": "def add(a, b):\n    return a + b\n"}
    good = {**files, "test.py": "from solution import add\nassert add(2, 3) == 5\nprint('ok')"}
    bad = {**files, "test.py": "from solution import add\nassert add(2, 3) == 6\n"}
    assert run(good, language="python", entry="test.py", backend=docker_backend).stdout == "ok\n"
    assert not run(bad, language="python", entry="test.py", backend=docker_backend).passed


def test_no_network_read_only_root_and_limits(docker_backend) -> None:
    src = """
import json, socket
report = {}
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2); report["net"] = "open"
except OSError:
    report["net"] = "blocked"
try:
    open("/etc/x", "w"); report["root"] = "writable"
except OSError:
    report["root"] = "read-only"
print(json.dumps(report))
"""
    result = run({"p.py": src}, language="python", entry="p.py", backend=docker_backend)
    assert json.loads(result.stdout) == {"net": "blocked", "root": "read-only"}
    loop = run(
        {"l.py": "while True: pass"},
        language="python",
        entry="l.py",
        limits=Limits(timeout_s=2),
        backend=docker_backend,
    )
    assert loop.timed_out


def test_cpp_compile_error(docker_backend) -> None:
    result = run({"m.cpp": "int main() { nope; }"}, language="cpp", entry="m.cpp", backend=docker_backend)
    assert result.compile_error and "nope" in result.stderr
