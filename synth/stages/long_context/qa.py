"""Question answering over long documents: a question written from one chunk (or from the document's
summary), answered from that context, judged against that context alone, and the SFT row that gives the
model the whole document.

The rule for a usable reply (``parse_qa``): a question, after a 'Question:' label or, unlabelled, a
first line that ends with '?', of at least ``MIN_QUESTION_WORDS`` words ('no_question', 'too_short'
otherwise; a reply holding several pairs: the first). Its answer is the text after an 'Answer:' (or
'A:') label, cut back to its last full sentence when the reply stopped at max_tokens. A reply that holds
only the question (small models often stop there) is answered by a second call (``AnswerQA``, the
context and the question, 'no_answer' when that is empty). The judge (``JudgeStage`` with
``long_context/qa_judge``) sees the question, the answer and the context it was written from, nothing
else, and keeps the pair when it finds the answer supported (its threshold). ``Assemble`` then writes
the row: the whole document, the instruction or question (a row prompt file), and the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from synth.engines.base import Completion
from synth.prompts import Prompt, load_prompt
from synth.records import Message, Record, SFTRecord
from synth.stages.code.common import cut_to_sentence
from synth.stages.llm import LLMStage, Reject
from synth.stages.long_context.items import CAPABILITY, Chunk, Document, QAPair, Summary

MIN_QUESTION_WORDS = 3
_QUESTION = re.compile(r"^\W*(?:question\s*\d*\s*[:.-]|q\s*:)\s*", re.IGNORECASE | re.MULTILINE)
_ANSWER = re.compile(r"^\W*(?:answer\s*\d*\s*[:.-]|a\s*:)\s*", re.IGNORECASE | re.MULTILINE)


def parse_qa(text: str, finish_reason: str = "stop") -> tuple[str, str | None]:
    """(question, answer or None) from a reply, or ``Reject`` with the reason."""
    q = _QUESTION.search(text)
    if q:
        start = q.end()
    else:  # unlabelled: a first line that asks
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        if not first.strip().endswith("?"):
            raise Reject("no_question")
        start = text.index(first)
    a = _ANSWER.search(text, start)
    if a:
        question, answer = " ".join(text[start : a.start()].split()), text[a.end() :].strip()
        later = _QUESTION.search(answer)  # a second pair after the first: only the first counts
        if later:
            answer = answer[: later.start()].strip()
        if finish_reason == "length":
            answer = cut_to_sentence(answer)
    else:
        rest = text[start:].strip()
        line = rest.splitlines()[0] if rest else ""
        question, answer = line[: line.index("?") + 1] if "?" in line else line, None
        question = " ".join(question.split())
    if not question:
        raise Reject("no_question")
    if len(re.findall(r"\w+", question)) < MIN_QUESTION_WORDS:
        raise Reject("too_short")
    return question, answer or None


@dataclass(kw_only=True)
class WriteQA(LLMStage):
    """Chunks (or document summaries) -> one question each (and its answer, when the reply has one)."""

    name: str = "write_qa"
    capability: str = CAPABILITY
    template: str = "long_context/qa"

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = load_prompt(self.template)

    def variables(self, item: Chunk | Summary) -> dict[str, Any]:
        if isinstance(item, Chunk):
            return {"title": item.title, "context": item.text, "part": item.index + 1, "parts": item.of}
        return {"title": item.title, "context": item.summary}

    def output_id(self, item: Chunk | Summary, j: int) -> str:
        if isinstance(item, Chunk):
            return f"{item.doc_id}#qa{item.index}" + (f"-{j}" if self.sampling.n > 1 else "")
        return f"{item.doc_id}#gqa{j}"

    def parse(self, item: Chunk | Summary, reply: Completion, j: int, messages) -> QAPair:
        question, answer = parse_qa(reply.text, reply.finish_reason)
        chunk = isinstance(item, Chunk)
        return QAPair(
            id=self.output_id(item, j),
            doc_id=item.doc_id,
            title=item.title,
            source="chunk" if chunk else "summary",
            index=item.index if chunk else None,
            context=item.text if chunk else item.summary,
            question=question,
            answer=answer,
            meta={"finish_reason": reply.finish_reason},
        )


@dataclass(kw_only=True)
class AnswerQA(LLMStage):
    """Questions written without their answer -> answered from their context alone; pairs that came
    with an answer pass through unchanged."""

    name: str = "answer_qa"
    capability: str = CAPABILITY

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = load_prompt("long_context/answer")

    def asks(self, pair: QAPair) -> bool:
        return pair.answer is None

    def variables(self, pair: QAPair) -> dict[str, Any]:
        return {"title": pair.title, "context": pair.context, "question": pair.question}

    def parse(self, pair: QAPair, reply: Completion, j: int, messages) -> QAPair:
        answer = _ANSWER.sub("", reply.text.strip(), count=1).strip()
        if reply.finish_reason == "length":
            answer = cut_to_sentence(answer)
        if not answer:
            raise Reject("no_answer")
        out = pair.model_copy(deep=True, update={"answer": answer})
        out.meta["answered_by"] = self.prompt.name if self.prompt else self.name
        out.meta["answer_finish_reason"] = reply.finish_reason
        return out


def judge_variables(pair: QAPair) -> dict[str, str]:
    """What the support judge sees: the context the pair was written from, alone."""
    return {"context": pair.context, "question": pair.question, "answer": pair.answer or ""}


@dataclass
class Assemble:
    """A document and its rows (run with ``Run.grouped``: they share the document's id as group key) ->
    one SFT row each: the row prompt file's user turn over the whole document (and the question), the
    row's answer or summary as the assistant turn; ``task`` goes in ``meta['task']``. The document's
    own row is read, never written."""

    name: str
    task: str
    row_prompt: Prompt

    def __call__(self, rows: list[Any]) -> list[Record]:
        doc: Document | None = None
        out: list[Record] = []
        for row in rows:
            if isinstance(row, Document):
                doc = row
                continue
            if doc is None or doc.id != row.doc_id:  # cannot happen with grouped input: the doc sorts first
                raise ValueError(f"{self.name}: row {row.id} arrived without its document {row.doc_id}")
            question = row.question if isinstance(row, QAPair) else ""
            answer = (row.answer if isinstance(row, QAPair) else row.summary) or ""
            user = self.row_prompt.messages(document=doc.text.strip(), title=doc.path, question=question)
            rec = SFTRecord(
                id=row.id,
                messages=[Message(role="user", content=user[-1]["content"]),
                          Message(role="assistant", content=answer)],  # fmt: skip
                provenance=row.provenance,
                scores=dict(row.scores),
                verdicts=list(row.verdicts),
                meta={"task": self.task, "doc_id": doc.id, "document_tokens": doc.tokens,
                      "row_template": self.row_prompt.name, "row_template_version": self.row_prompt.hash,
                      **({"chunk": row.index} if getattr(row, "index", None) is not None else {})},
            )  # fmt: skip
            rec.keep(self.name)
            out.append(rec)
        return out
