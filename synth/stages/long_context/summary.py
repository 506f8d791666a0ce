"""Hierarchical summaries: each chunk summarised, then the chunk summaries summarised into one summary of
the whole document (Llama 3's two levels).

The rule for a usable summary (``parse_summary``): the reply without a leading 'Summary:' header, cut
back to its last full sentence when it stopped at max_tokens, at least ``MIN_WORDS`` words ('no_summary',
'too_short' otherwise). A document goes to the second level only when every one of its chunks has a
usable summary (``CollectSummaries``: 'chunk_summaries_missing' otherwise, with how many).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from synth.engines.base import Completion
from synth.prompts import load_prompt
from synth.records import Record
from synth.stages.code.common import cut_to_sentence
from synth.stages.llm import LLMStage, Reject
from synth.stages.long_context.items import CAPABILITY, Chunk, Document, Summaries, Summary

MIN_WORDS = 8
_HEADER = re.compile(r"^\W*(?:summary|here is (?:a|the) summary)[^:\n]*:\s*", re.IGNORECASE)


def parse_summary(text: str, finish_reason: str = "stop") -> str:
    body = _HEADER.sub("", text.strip(), count=1).strip()
    if finish_reason == "length":
        body = cut_to_sentence(body)
    if not body:
        raise Reject("no_summary")
    if len(re.findall(r"\w+", body)) < MIN_WORDS:
        raise Reject("too_short")
    return body


@dataclass(kw_only=True)
class Summarise(LLMStage):
    """Chunks -> their summaries (level 1), or a document's chunk summaries -> the document's (level 2)."""

    name: str = "summarise_chunks"
    capability: str = CAPABILITY

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = load_prompt("long_context/summarise_chunk")

    def variables(self, item: Chunk | Summaries) -> dict[str, Any]:
        if isinstance(item, Chunk):
            return {"title": item.title, "chunk": item.text, "part": item.index + 1, "parts": item.of}
        return {"title": item.title, "summaries": item.summaries}

    def output_id(self, item: Chunk | Summaries, j: int) -> str:
        return f"{item.doc_id}#s{item.index}" if isinstance(item, Chunk) else f"{item.doc_id}#summary"

    def parse(self, item: Chunk | Summaries, reply: Completion, j: int, messages) -> Summary:
        chunk = isinstance(item, Chunk)
        return Summary(
            id=self.output_id(item, j),
            doc_id=item.doc_id,
            title=item.title,
            level=1 if chunk else 2,
            index=item.index if chunk else None,
            summary=parse_summary(reply.text, reply.finish_reason),
            meta={"finish_reason": reply.finish_reason},
        )


@dataclass
class CollectSummaries:
    """A document and its chunk summaries (``Run.grouped``) -> one ``Summaries`` row, in chunk order;
    rejected 'chunk_summaries_missing' unless every chunk has its summary."""

    name: str = "collect_summaries"

    def __call__(self, rows: list[Any]) -> list[Record]:
        out: list[Record] = []
        doc: Document | None = None
        found: dict[int, str] = {}

        def flush() -> None:
            if doc is None:
                return
            n = len(doc.chunks)
            row = Summaries(
                id=f"{doc.id}#summaries",
                doc_id=doc.id,
                title=doc.path,
                summaries=[found[i] for i in range(n) if i in found] or ["(none)"],
                provenance=doc.provenance,
            )
            if len(found) < n:
                row.meta["detail"] = f"{len(found)} of {n} chunks summarised"
                row.reject(self.name, "chunk_summaries_missing")
            else:
                row.keep(self.name)
            out.append(row)

        for row in rows:
            if isinstance(row, Document):
                flush()
                doc, found = row, {}
            elif doc is not None and row.doc_id == doc.id and row.index is not None:
                found[row.index] = row.summary
        flush()
        return out
