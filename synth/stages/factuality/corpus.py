"""Snippets of a corpus: Llama 3's first step of knowledge probing ("extract a data snippet from the
pre-training data").

Every ``.txt`` and ``.md`` file under a folder (sorted, recursively) is read as UTF-8 and split into
paragraphs at blank lines; a paragraph longer than ``max_chars`` is cut at sentence ends into pieces
of at most that size, and pieces shorter than ``min_chars`` are skipped (headings, stray lines). Each
snippet's id is its file and paragraph (``countries.txt#3``), so a resumed run reads the same ones. An
empty corpus, or one without a single snippet, stops the run with the folder's name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from synth.io import InputFileError
from synth.records import Provenance
from synth.stages.factuality.items import CAPABILITY, Snippet

SUFFIXES = (".txt", ".md")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def pieces(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph cut at sentence ends into pieces of at most ``max_chars`` (a longer sentence is one
    piece of its own)."""
    out: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        if current and len(current) + 1 + len(sentence) > max_chars:
            out.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        out.append(current)
    return out


def read_corpus(
    folder: str | Path, max_chars: int = 800, min_chars: int = 80, limit: int | None = None
) -> Iterator[Snippet]:
    root = Path(folder)
    if not root.is_dir():
        raise InputFileError(f"corpus {folder}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    n = 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        index = 0
        for paragraph in re.split(r"\n\s*\n", text):
            flat = " ".join(paragraph.split())
            for piece in pieces(flat, max_chars):
                if len(piece) < min_chars:
                    continue
                if limit is not None and n >= limit:
                    return
                yield Snippet(
                    id=f"{rel}#{index}",
                    text=piece,
                    source=rel,
                    provenance=Provenance(capability=CAPABILITY, source=rel),
                )
                index += 1
                n += 1
    if n == 0:
        raise InputFileError(
            f"corpus {folder}: no snippet of at least {min_chars} characters in its .txt/.md files"
        )
