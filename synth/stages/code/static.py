"""Static analysis with ruff: syntax errors and pyflakes lint on extracted code, as feedback.

``ruff check --select E9,F --output-format json`` runs once per batch over a temporary folder of files
(ruff only parses, it never runs the code). Findings are all reported back to the model in a repair
round; only syntax errors and the ones that make a program wrong before it runs (undefined names,
``return`` outside a function, ...) block a candidate: ``BLOCKING`` is that rule.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SELECT = "E9,F"
BLOCKING = ("F821", "F822", "F823", "F704", "F706", "F707", "F631", "F632", "F502", "F503", "F601")
SYNTAX = "invalid-syntax"


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    row: int
    column: int

    @property
    def syntax(self) -> bool:
        return self.code == SYNTAX or self.code.startswith("E9")

    @property
    def blocking(self) -> bool:
        return self.syntax or self.code in BLOCKING

    def render(self, filename: str = "solution.py") -> str:
        return f"{filename}:{self.row}:{self.column}: {self.code} {self.message}"


def ruff_command() -> list[str]:
    """The ruff binary next to the interpreter (the venv's), else on PATH, else ``python -m ruff``."""
    here = Path(sys.executable).parent / "ruff"
    if here.exists():
        return [str(here)]
    found = shutil.which("ruff")
    return [found] if found else [sys.executable, "-m", "ruff"]


def ruff_check(sources: list[str]) -> list[list[Finding]]:
    """Findings per source, in order (one ruff process for the whole list)."""
    if not sources:
        return []
    with tempfile.TemporaryDirectory(prefix="synth-ruff-") as tmp:
        names = [Path(tmp) / f"c{i}.py" for i in range(len(sources))]
        for path, src in zip(names, sources, strict=True):
            path.write_text(src)
        cmd = [*ruff_command(), "check", "--isolated", "--no-cache", "--select", SELECT]
        proc = subprocess.run(
            [*cmd, "--output-format", "json", "--exit-zero", tmp], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise RuntimeError(f"ruff failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
        by_file: dict[str, list[Finding]] = {str(p): [] for p in names}
        for item in json.loads(proc.stdout or "[]"):
            by_file.setdefault(item["filename"], []).append(
                Finding(
                    code=item.get("code") or SYNTAX,
                    message=item["message"],
                    row=item["location"]["row"],
                    column=item["location"]["column"],
                )
            )
    return [by_file[str(p)] for p in names]


def verdict(findings: list[Finding]) -> str | None:
    """The rejection reason for a solution's findings: 'syntax_error', 'lint' or None (clean enough)."""
    if any(f.syntax for f in findings):
        return "syntax_error"
    if any(f.blocking for f in findings):
        return "lint"
    return None
