"""A small stateful environment for `synth run tools`: an in-memory file system, plus two stateless
helpers. Every public function with a docstring and type hints becomes a tool (`--tools FILE.py`
takes any file written like this one). The state lives in module globals; within one trace the
sandbox replays the earlier calls before each new one, so a file written in one turn is there in the
next. Standard library only: the sandbox runs the system's Python.
"""

from __future__ import annotations

import datetime
from typing import Literal

_FILES: dict[str, str] = {"/notes/todo.txt": "buy milk\ncall Ana\n", "/notes/ideas.txt": "a garden robot\n"}
_DIRS: set[str] = {"/", "/notes"}


def _norm(path: str) -> str:
    parts = [p for p in path.strip().split("/") if p and p != "."]
    return "/" + "/".join(parts)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def list_dir(path: str = "/") -> list[str]:
    """List the files and folders in a folder of the file system.

    Args:
        path: The folder, e.g. "/notes".
    """
    path = _norm(path)
    if path not in _DIRS:
        raise FileNotFoundError(f"no such folder: {path}")
    prefix = path.rstrip("/") + "/"
    names = {
        p[len(prefix) :].split("/", 1)[0] for p in [*_FILES, *_DIRS] if p.startswith(prefix) and p != path
    }
    return sorted(names)


def make_dir(path: str) -> str:
    """Create a folder (its parent folder must exist).

    Args:
        path: The new folder, e.g. "/projects".
    """
    path = _norm(path)
    if _parent(path) not in _DIRS:
        raise FileNotFoundError(f"no such folder: {_parent(path)}")
    _DIRS.add(path)
    return f"created {path}"


def write_file(path: str, text: str) -> str:
    """Write text to a file, replacing what it held (its folder must exist).

    Args:
        path: The file, e.g. "/notes/shopping.txt".
        text: What the file should contain.
    """
    path = _norm(path)
    if _parent(path) not in _DIRS:
        raise FileNotFoundError(f"no such folder: {_parent(path)}")
    _FILES[path] = text
    return f"wrote {len(text)} characters to {path}"


def read_file(path: str) -> str:
    """Read a whole file.

    Args:
        path: The file, e.g. "/notes/todo.txt".
    """
    path = _norm(path)
    if path not in _FILES:
        raise FileNotFoundError(f"no such file: {path}")
    return _FILES[path]


def delete_file(path: str) -> str:
    """Delete a file.

    Args:
        path: The file to delete.
    """
    path = _norm(path)
    if _FILES.pop(path, None) is None:
        raise FileNotFoundError(f"no such file: {path}")
    return f"deleted {path}"


def days_between(start: str, end: str) -> int:
    """Count the days from one date to another.

    Args:
        start: The first date, as YYYY-MM-DD.
        end: The second date, as YYYY-MM-DD.
    """
    return (datetime.date.fromisoformat(end) - datetime.date.fromisoformat(start)).days


def convert_temperature(value: float, to: Literal["celsius", "fahrenheit"]) -> float:
    """Convert a temperature between Celsius and Fahrenheit.

    Args:
        value: The temperature to convert.
        to: The unit to convert to.
    """
    if to == "fahrenheit":
        return round(value * 9 / 5 + 32, 2)
    if to == "celsius":
        return round((value - 32) * 5 / 9, 2)
    raise ValueError("to must be 'celsius' or 'fahrenheit'")
