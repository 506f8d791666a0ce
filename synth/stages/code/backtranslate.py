"""Backtranslation (Llama 3 code documentation): the model documents a code file, a second call writes
code back from the documentation alone, and an LLM judge scores how faithfully that code reproduces the
original (1-10). High scorers keep (code -> documentation) as an SFT row.

Sources: corpus snippets and passing solutions (rows of ``snippets`` / ``solutions``). Rules: a
documentation reply is cut back to its last full sentence when it hit max_tokens; it is rejected when
empty ('no_doc') or when it leaks the code (a code block, or half the code's lines verbatim:
'doc_leaks_code'), since then writing code back from it proves nothing. The regenerated code must exist
('no_code'); the judge (``synth/prompts/code/faithfulness.yaml``, a ``JudgeStage``) keeps scores >= the
threshold ('below_threshold', 'judge_unparseable').
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from synth.engines.base import Completion
from synth.records import Record, SFTRecord
from synth.stages.code.common import CodeStage, block, cut_to_sentence, sft_row
from synth.stages.code.extract import extract_code, fenced_blocks
from synth.stages.code.items import Backtranslation, Snippet
from synth.stages.judge import JudgeStage
from synth.stages.llm import Reject

MAX_CODE_CHARS = 3000
SCORE = "faithfulness"


def leaks_code(doc: str, code: str) -> bool:
    if fenced_blocks(doc):
        return True
    lines = {ln.strip() for ln in code.splitlines() if len(ln.strip()) > 12}
    return bool(lines) and sum(ln in doc for ln in lines) >= max(2, len(lines) // 2)


def source_of(item: Snippet | SFTRecord) -> tuple[str, str]:
    """(code, source) of a backtranslation source: a corpus file (its path) or a passing solution (its
    id; the code in ``meta['code']``)."""
    if isinstance(item, Snippet):
        return item.code, item.path
    return item.meta["code"], item.id


@dataclass(kw_only=True)
class Document(CodeStage):
    """Sources -> their documentation (ids ``bt-{source id}``)."""

    name: str = "bt_document"
    template = "code/document"

    def request(self, code: str) -> str:
        """The short user turn of the SFT row (the prompt file's ``request``)."""
        assert self.prompt is not None
        short = replace(self.prompt, system=None, shots=(), user=self.prompt.data["request"])
        return short.messages(code=block(code, MAX_CODE_CHARS))[-1]["content"]

    def variables(self, item: Snippet | SFTRecord) -> dict[str, str]:
        code, _ = source_of(item)
        return {"request": self.request(code)}

    def output_id(self, item: Record, j: int) -> str:
        return f"bt-{item.id}"

    def parse(self, item: Snippet | SFTRecord, reply: Completion, j: int, messages) -> Backtranslation:
        code, source = source_of(item)
        doc = reply.text.strip()
        if reply.finish_reason == "length":
            doc = cut_to_sentence(doc)
        if not doc:
            raise Reject("no_doc")
        if leaks_code(doc, code):
            raise Reject("doc_leaks_code")
        prov = self.provenance(item)
        prov.source = source
        rid = self.output_id(item, j)
        return Backtranslation(id=rid, code=code, source=source, request=self.request(code), doc=doc,
                               provenance=prov)  # fmt: skip


@dataclass(kw_only=True)
class Regenerate(CodeStage):
    """Documented code -> code written back from the documentation alone."""

    name: str = "bt_regenerate"
    template = "code/regenerate"

    def variables(self, bt: Backtranslation) -> dict[str, str]:
        return {"doc": bt.doc}

    def parse(self, bt: Backtranslation, reply: Completion, j: int, messages) -> Backtranslation:
        code = extract_code(reply.text)
        if not code:
            raise Reject("no_code")
        return bt.model_copy(deep=True, update={"regenerated": code})


def faithfulness_variables(bt: Backtranslation) -> dict[str, str]:
    return {
        "original": block(bt.code, MAX_CODE_CHARS),
        "rewritten": block(bt.regenerated or "", MAX_CODE_CHARS),
    }


@dataclass
class FaithfulnessJudge(JudgeStage):
    """The judge over (original, rewritten); each judged item becomes its SFT row (the short
    "Document this code" request -> the documentation), kept when faithful enough."""

    def __call__(self, items: list[Backtranslation]) -> list[Any]:
        out = []
        for bt in super().__call__(items):
            meta = {**bt.meta, "code": bt.code, "source": bt.source, "regenerated": bt.regenerated}
            out.append(sft_row(bt, bt.request, bt.doc, **meta))
        return out
