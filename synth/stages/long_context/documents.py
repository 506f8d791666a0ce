"""Long documents: read from the corpus, cut into token chunks, and chunks picked for questions.

The rule for a usable document (stage ``chunk_documents``): it is cut into chunks of ``chunk`` tokens of
the model's tokenizer; one that fills fewer than ``min_chunks`` chunks is not long ('too_short'), and one
that, with the room for a question and an answer, would not fit in the model's context is rejected
'exceeds_context' (its SFT rows carry the whole document: they could never be trained on). Questions are
written from chunks picked at random (``pick_chunks``): the pick is seeded by the run's seed and the
document's id, so a rerun picks the same chunks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from synth.records import Provenance, Record
from synth.stages.long_context.items import CAPABILITY, Chunk, Document
from synth.stages.long_context.tokens import Lengths, Tokens

SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", ".ruff_cache"}


def read_documents(
    corpus: str | Path, extensions: Sequence[str], limit: int | None = None, round: int = 0
) -> Iterator[Document]:
    """One document per file of the corpus with one of ``extensions`` (sorted by path; id = the path
    inside the corpus), read one at a time; empty files are skipped. A missing or empty corpus fails
    here, before any file is read."""
    root = Path(corpus)
    if not root.is_dir():
        raise FileNotFoundError(f"long-context corpus not found: {root}")
    wanted = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in wanted and not SKIP_DIRS & set(p.relative_to(root).parts)
    )
    if not files:
        raise FileNotFoundError(f"no {', '.join(sorted(wanted))} files in long-context corpus {root}")
    return _documents(root, files, limit, round)


def _documents(root: Path, files: list[Path], limit: int | None, round: int) -> Iterator[Document]:
    n = 0
    for path in files:
        if limit is not None and n >= limit:
            return
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            continue
        rel = path.relative_to(root).as_posix()
        n += 1
        yield Document(id=rel, path=rel, text=text,
                       provenance=Provenance(capability=CAPABILITY, source=rel, round=round))  # fmt: skip


@dataclass
class ChunkDocuments:
    """Documents -> the same documents with their token count and chunks, or rejected (see above)."""

    lengths: Lengths
    tokens: Tokens
    min_chunks: int = 2
    room: int = 320  # tokens a row adds to its document: the question or instruction, the answer
    name: str = "chunk_documents"

    def __call__(self, docs: list[Document]) -> list[Document]:
        for doc in docs:
            doc.tokens = self.tokens.count(doc.text)
            limit = self.lengths.context - self.room
            if doc.tokens > limit:
                doc.meta["detail"] = f"{doc.tokens:,} tokens > {self.lengths.context:,} - {self.room:,}"
                doc.reject(self.name, "exceeds_context")
                continue
            doc.chunks = self.tokens.split(doc.text, self.lengths.chunk)
            if len(doc.chunks) < self.min_chunks:
                doc.meta["detail"] = (
                    f"{doc.tokens:,} tokens: {len(doc.chunks)} chunk(s) of {self.lengths.chunk:,} < "
                    f"{self.min_chunks}"
                )
                doc.reject(self.name, "too_short")
                continue
            doc.keep(self.name)
        return docs


def chunk_of(doc: Document, index: int) -> Chunk:
    return Chunk(
        id=f"{doc.id}#c{index}",
        doc_id=doc.id,
        title=doc.path,
        index=index,
        of=len(doc.chunks),
        text=doc.chunks[index],
        provenance=doc.provenance,
    )


@dataclass
class AllChunks:
    """Documents -> every chunk of each (what the summaries start from)."""

    name: str = "chunks"

    def __call__(self, docs: list[Document]) -> list[Record]:
        out: list[Record] = []
        for doc in docs:
            for i in range(len(doc.chunks)):
                chunk = chunk_of(doc, i)
                chunk.keep(self.name)
                out.append(chunk)
        return out


@dataclass
class PickChunks:
    """Documents -> ``per_document`` of their chunks, picked at random without repeats (fewer when the
    document has fewer chunks), seeded by ``seed`` and the document's id."""

    per_document: int
    seed: int = 0
    name: str = "pick_chunks"

    def __call__(self, docs: list[Document]) -> list[Record]:
        out: list[Record] = []
        for doc in docs:
            rng = random.Random(f"{self.seed}:{doc.id}")
            picked = sorted(rng.sample(range(len(doc.chunks)), min(self.per_document, len(doc.chunks))))
            for i in picked:
                chunk = chunk_of(doc, i)
                chunk.keep(self.name)
                out.append(chunk)
        return out
