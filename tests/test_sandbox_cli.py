"""`synth sandbox run FILE`: one JSON object on stdout, exit 0 whatever the program did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sandboxes.cli import app

runner = CliRunner()
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def invoke(*args: str) -> dict:
    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@needs_bwrap
def test_failing_program_still_exits_zero(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text("import sys\nprint('out')\nsys.exit(3)\n")
    data = invoke(str(script))
    assert data["exit_code"] == 3 and data["stdout"] == "out\n" and data["status"] == "failed"
    assert data["language"] == "python" and data["isolated"] is True
    assert {"stderr", "timed_out", "oom", "wall_s", "cpu_s"} <= set(data)


@needs_bwrap
def test_timeout_memory_and_explicit_language(tmp_path: Path) -> None:
    script = tmp_path / "loop.txt"
    script.write_text("while (true) {}\n")
    data = invoke(str(script), "--lang", "javascript", "--timeout", "1", "--memory", "256")
    assert data["timed_out"] is True and data["wall_s"] < 3


@needs_bwrap
def test_stdin_file(tmp_path: Path) -> None:
    (tmp_path / "echo.php").write_text("<?php echo strtoupper(stream_get_contents(STDIN));")
    (tmp_path / "in.txt").write_text("shout")
    if shutil.which("php") is None:
        pytest.skip("php-cli not installed")
    data = invoke(str(tmp_path / "echo.php"), "--stdin", str(tmp_path / "in.txt"))
    assert data["stdout"] == "SHOUT"


def test_unsafe_no_isolation(tmp_path: Path) -> None:
    script = tmp_path / "hi.py"
    script.write_text("print('hi')")
    data = invoke(str(script), "--unsafe-no-isolation")
    assert data["stdout"] == "hi\n" and data["isolated"] is False


def test_unknown_extension_is_a_usage_error(tmp_path: Path) -> None:
    script = tmp_path / "x.rb"
    script.write_text("puts 1")
    result = runner.invoke(app, ["run", str(script)])
    assert result.exit_code == 2 and "--lang" in result.output


@needs_bwrap
def test_check_reports_the_local_backend() -> None:
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0 and "local: available" in result.output


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "-1", "0", "1e9"])
def test_bad_timeout_is_a_one_line_error_with_the_range(tmp_path: Path, value: str) -> None:
    script = tmp_path / "hi.py"
    script.write_text("print('hi')")
    result = runner.invoke(app, ["run", str(script), "--timeout", value, "--unsafe-no-isolation"])
    assert result.exit_code == 2, result.output  # a usage error, not a traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --timeout must be") and "(0, 86400]" in lines[0]


def test_bad_memory_is_a_one_line_error(tmp_path: Path) -> None:
    script = tmp_path / "hi.py"
    script.write_text("print('hi')")
    result = runner.invoke(app, ["run", str(script), "--memory", "0", "--unsafe-no-isolation"])
    assert result.exit_code == 2 and result.output.strip().startswith("error: --memory must be in [1, ")


@needs_bwrap
@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        ("-x.py", "print('dash')\n", "dash\n"),
        ("-x.js", "console.log('dash');\n", "dash\n"),
        ("-x.php", "<?php echo 'dash';\n", "dash"),
    ],
)
def test_a_file_named_like_an_option_runs(tmp_path: Path, monkeypatch, name, source, expected) -> None:
    if name.endswith(".php") and shutil.which("php") is None:
        pytest.skip("php-cli not installed")
    (tmp_path / name).write_text(source)
    monkeypatch.chdir(tmp_path)
    for args in (["--", name], [f"./{name}"], [str(tmp_path / name)]):
        data = invoke(*args)
        assert (data["status"], data["stdout"]) == ("ok", expected), (args, data["stderr"])
