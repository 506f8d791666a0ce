"""How each supported language is compiled and run, independent of the backend.

Commands are templates: `{tool}` names are resolved by the backend (an absolute path under /usr
for the local sandbox, a bare name inside a container image), `{entry}` is the entry file
relative to the work dir (as `./-x.py` when it starts with `-`, so no tool reads it as an option),
`{binary}` where a compiled program is written, `{heap_mb}` the memory limit for runtimes that manage
their own heap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sandboxes.base import Limits


@dataclass(frozen=True)
class Language:
    name: str
    extensions: tuple[str, ...]
    tool: str  # the interpreter or compiler, by command name
    run: tuple[str, ...]
    compile: tuple[str, ...] | None = None
    # Address space the runtime reserves on top of what the program uses (V8 reserves ~1 GB
    # of virtual memory at start-up and aborts under a tight RLIMIT_AS).
    address_space_headroom_mb: int = 0
    # Text a runtime prints when it runs out of memory, to report `oom` for clean failures too.
    oom_markers: tuple[str, ...] = ()

    def render(
        self, template: tuple[str, ...], *, tool: str, entry: str, binary: str, limits: Limits
    ) -> list[str]:
        if entry.startswith("-"):  # `-x.py` is a file, not an option of the interpreter or compiler
            entry = "./" + entry
        values = {"tool": tool, "entry": entry, "binary": binary, "heap_mb": limits.memory_mb}
        return [part.format(**values) for part in template]


LANGUAGES: dict[str, Language] = {
    lang.name: lang
    for lang in (
        Language(
            name="python",
            extensions=(".py",),
            tool="python3",
            # -s: no user site; not -I, which would drop the script's dir from sys.path and
            # break `from solution import ...` in test files.
            run=("{tool}", "-B", "-s", "{entry}"),
            oom_markers=("MemoryError",),
        ),
        Language(
            name="javascript",
            extensions=(".js", ".mjs", ".cjs"),
            tool="node",
            run=("{tool}", "--max-old-space-size={heap_mb}", "{entry}"),
            address_space_headroom_mb=2048,
            oom_markers=("heap out of memory", "Fatal process OOM", "RangeError: Array buffer"),
        ),
        Language(
            name="php",
            extensions=(".php",),
            tool="php",
            run=(
                "{tool}",
                "-d",
                "memory_limit={heap_mb}M",
                "-d",
                "display_errors=stderr",
                "-d",
                "zend.assertions=1",
                "{entry}",
            ),
            oom_markers=("Allowed memory size of",),
        ),
        Language(
            name="cpp",
            extensions=(".cpp", ".cc", ".cxx", ".c++"),
            tool="g++",
            compile=("{tool}", "-std=c++17", "-O2", "-pipe", "-o", "{binary}", "{entry}"),
            run=("{binary}",),
            oom_markers=("std::bad_alloc",),
        ),
    )
}

ALIASES = {"py": "python", "js": "javascript", "node": "javascript", "c++": "cpp"}


def get_language(name: str) -> Language:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in LANGUAGES:
        raise ValueError(f"unknown language {name!r}; known: {', '.join(sorted(LANGUAGES))}")
    return LANGUAGES[key]


def language_for_file(path: str) -> Language:
    """Infer the language from a file extension (used by the CLI when --lang is omitted)."""
    ext = os.path.splitext(path)[1].lower()
    for lang in LANGUAGES.values():
        if ext in lang.extensions:
            return lang
    raise ValueError(f"cannot infer the language of {path!r}; pass --lang")
