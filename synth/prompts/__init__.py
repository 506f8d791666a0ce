"""Prompts as data: ``synth/prompts/<capability>/<name>.yaml``, readable without reading Python.

A prompt file holds an optional ``system`` message, optional few-shot ``shots`` (user/assistant pairs,
as earlier chat turns: small models follow examples better than bare instructions) and the ``user``
turn, all Jinja templates over the variables a stage passes (``{{ problem }}``). Its content hash goes
into every row's provenance, so a changed prompt is visible in the data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

ROOT = Path(__file__).parent
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


@dataclass(frozen=True)
class Prompt:
    name: str  # "<capability>/<file stem>"
    hash: str  # of the file's content
    system: str | None
    shots: tuple[tuple[str, str], ...]
    user: str
    data: dict[str, Any]  # the whole file (stages may keep extra keys there, e.g. a judge's scale)

    def messages(self, **variables: Any) -> list[dict[str, str]]:
        def render(text: str) -> str:
            if "{" not in text:  # no template syntax (a system prompt, a few-shot turn): as written
                return text.strip()
            return _compiled(text).render(**variables).strip()

        msgs = [{"role": "system", "content": render(self.system)}] if self.system else []
        for user, assistant in self.shots:
            msgs += [
                {"role": "user", "content": render(user)},
                {"role": "assistant", "content": render(assistant)},
            ]
        msgs.append({"role": "user", "content": render(self.user)})
        return msgs


@cache
def _compiled(text: str) -> jinja2.Template:
    return _ENV.from_string(text)


@cache
def load_prompt(name: str, root: str | None = None) -> Prompt:
    """``load_prompt("code/solve")`` reads ``synth/prompts/code/solve.yaml`` (or under ``root``)."""
    path = Path(root or ROOT) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if "user" not in data:
        raise ValueError(f"{path}: a prompt file needs a 'user' template")
    shots = tuple((s["user"], s["assistant"]) for s in data.get("shots") or ())
    return Prompt(
        name=name,
        hash=hashlib.sha256(text.encode()).hexdigest()[:12],
        system=data.get("system"),
        shots=shots,
        user=data["user"],
        data=data,
    )
