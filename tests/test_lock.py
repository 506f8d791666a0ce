"""Installs are reproducible: every dependency is pinned in constraints.txt, and the set-up
installed exactly those pins (`make lock` regenerates them)."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"constraints.txt: {line!r} is not pinned with =="
            out[canonicalize_name(name)] = ver
    return out


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_dependency_is_pinned_and_installed_at_its_pin():
    pinned = pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not in constraints.txt: run `make lock`"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{req.name}: pin outside {req}"
        try:
            installed = version(req.name)
        except PackageNotFoundError:  # pragma: no cover - the set-up installs every one
            raise AssertionError(f"{req.name} is not installed") from None
        # torch comes from a local CPU build: 2.13.0+cpu
        assert re.sub(r"\+.*", "", installed) == re.sub(r"\+.*", "", pinned[name]), (
            f"{req.name} {installed} installed, constraints.txt pins {pinned[name]}"
        )


def test_transformers_floor_excludes_the_packing_and_accumulation_bugs():
    (req,) = [r for r in requirements() if r.name == "transformers"]
    assert not req.specifier.contains("4.53.3") and not req.specifier.contains("4.50.0")
    assert req.specifier.contains("4.54.0")
    assert Version(pins()["transformers"]) >= Version("4.54")
