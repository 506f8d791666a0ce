"""The search tool: BM25 full-text search over a local corpus (the user's documents).

``read_documents(DIR)`` splits every ``.md`` / ``.txt`` file under ``DIR`` (sorted, recursively) into
passages (paragraphs, merged up to about ``PASSAGE_CHARS`` characters), each a ``Passage`` item with
its file, title (the first Markdown heading, else the file name) and text; the recipe stores them as a
source, so a run resumed over an edited corpus is refused. ``SearchIndex`` ranks passages with Okapi
BM25 (``rank_bm25``; DuckDB's own full-text extension is downloaded at first use, which this machine
cannot) over lower-cased, lightly stemmed word tokens without English stop words, the title
counted with its passage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from synth.records import Item, register_kind

PASSAGE_CHARS = 700
SUFFIXES = (".md", ".txt")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_HEADING = re.compile(r"^#+\s+(.+)$", re.MULTILINE)
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "can",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "their",
        "there",
        "these",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "about",
        "into",
        "than",
        "then",
        "them",
        "they",
        "we",
        "our",
    ]
)


@register_kind
class Passage(Item):
    """One passage of a corpus document (id: ``path#n``)."""

    kind: Literal["tool_passage"] = "tool_passage"
    path: str
    title: str
    text: str


def stem(word: str) -> str:
    """A light suffix stemmer (opening, opens -> open; libraries -> library; hours -> hour)."""
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokens(text: str) -> list[str]:
    return [stem(t) for t in _WORD.findall(text.lower()) if t not in STOP_WORDS]


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def read_documents(corpus: str | Path) -> Iterator[Passage]:
    """The corpus's passages, file by file in path order (a missing or empty folder raises)."""
    root = Path(corpus)
    if not root.is_dir():
        raise FileNotFoundError(f"--corpus {corpus}: not a folder of .md/.txt documents")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise FileNotFoundError(f"--corpus {corpus}: no .md or .txt documents in it")
    for path in files:
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        heading = _HEADING.search(text)
        title = heading.group(1).strip() if heading else path.stem.replace("_", " ").replace("-", " ")
        chunk: list[str] = []
        n = 0
        for para in _paragraphs(text):
            if para.startswith("#") and _HEADING.fullmatch(para):
                continue  # the heading is the title
            if chunk and sum(len(c) for c in chunk) + len(para) > PASSAGE_CHARS:
                yield Passage(id=f"{rel}#{n}", path=rel, title=title, text="\n\n".join(chunk))
                n += 1
                chunk = []
            chunk.append(para)
        if chunk:
            yield Passage(id=f"{rel}#{n}", path=rel, title=title, text="\n\n".join(chunk))


class SearchIndex:
    """Okapi BM25 over passages; ``search(query, k)`` -> the best ``k`` with a positive score."""

    def __init__(self, passages: Iterable[Passage]) -> None:
        from rank_bm25 import BM25Okapi

        self.passages = list(passages)
        if not self.passages:
            raise ValueError("a search index needs at least one passage")
        self._bm25 = BM25Okapi([tokens(f"{p.title}\n{p.text}") or ["_"] for p in self.passages])

    def search(self, query: str, k: int = 3) -> list[tuple[Passage, float]]:
        words = tokens(query)
        if not words:
            return []
        scores = self._bm25.get_scores(words)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [(self.passages[i], float(scores[i])) for i in order[:k] if scores[i] > 0]

    def render(self, query: str, k: int = 3, chars: int = 400) -> str:
        """What the tool returns: numbered passages with their titles, or 'No results.'"""
        hits = self.search(query, k)
        if not hits:
            return "No results."
        out = []
        for i, (p, _) in enumerate(hits, 1):
            text = p.text if len(p.text) <= chars else p.text[:chars].rsplit(" ", 1)[0] + " ..."
            out.append(f"[{i}] {p.title} ({p.path})\n{text}")
        return "\n\n".join(out)
