"""Questions about snippets (Llama 3's knowledge probing, step 2), checked against their snippet, and
the policy's K answers to them (step 3).

- ``WriteQuestions``: a snippet -> ``n`` questions (``synth/prompts/factuality/question.yaml``), each
  with the short answer the writer copied from the snippet. The check that the snippet answers it: the
  answer must occur in the snippet ('answer_not_in_snippet') and not in the question
  ('answer_in_question'); the reply must hold a question ('no_question': a 'Question:' line ending in
  '?') and an answer ('no_answer'); a question asked twice about a snippet is kept once ('duplicate').
- ``AnswerQuestions``: a question -> K answers sampled from the policy, the question alone as the
  prompt (closed book: the snippet is not shown). A blank reply is rejected ('empty_reply').
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from synth.engines.base import Completion
from synth.prompts import load_prompt
from synth.records import Message, Record, SFTRecord
from synth.stages.factuality.items import CAPABILITY, FactQuestion, Snippet
from synth.stages.generate import Respond
from synth.stages.llm import LLMStage, Reject

_QUESTION = re.compile(r"^\W*question\s*\d*\s*[:.-]\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_ANSWER = re.compile(r"^\W*answer\s*\d*\s*[:.-]\s*(.+)$", re.IGNORECASE | re.MULTILINE)


def normalized(text: str) -> str:
    """Lower case, punctuation as spaces, single spaces, thousands separators dropped ("80,783" ->
    "80783"): the form answers are compared in."""
    text = re.sub(r"(?<=\d)[,\u202f ](?=\d{3}\b)", "", text.lower())
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def mentions(text: str, answer: str) -> bool:
    """Whether ``text`` states ``answer`` (whole words, after normalisation)."""
    a = normalized(answer)
    return bool(a) and f" {a} " in f" {normalized(text)} "


@dataclass(kw_only=True)
class WriteQuestions(LLMStage):
    """Snippets -> ``n`` checked questions each (ids ``{snippet}-q{j}``)."""

    name: str = "write_questions"
    capability: str = CAPABILITY

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = load_prompt("factuality/question")

    def variables(self, snippet: Snippet) -> dict[str, str]:
        return {"snippet": snippet.text}

    def output_id(self, snippet: Snippet, j: int) -> str:
        return f"{snippet.id}-q{j}"

    def parse(self, snippet: Snippet, reply: Completion, j: int, messages: Any) -> FactQuestion:
        q, a = _QUESTION.search(reply.text), _ANSWER.search(reply.text)
        question = q.group(1).strip() if q else ""
        if not question.endswith("?"):
            raise Reject("no_question")
        answer = a.group(1).strip().strip("\"'*").rstrip(".").strip() if a else ""
        if not normalized(answer):
            raise Reject("no_answer")
        if not mentions(snippet.text, answer):
            raise Reject("answer_not_in_snippet")
        if mentions(question, answer):
            raise Reject("answer_in_question")
        return FactQuestion(
            id=self.output_id(snippet, j),
            snippet_id=snippet.id,
            snippet=snippet.text,
            question=question,
            reference=answer,
            meta={"source": snippet.source},
        )

    def __call__(self, items: list[Any]) -> list[Record]:
        out = super().__call__(items)
        seen: set[tuple[str, str]] = set()
        for rec in out:
            if isinstance(rec, FactQuestion) and rec.kept:
                key = (rec.snippet_id, normalized(rec.question))
                if key in seen:
                    rec.reject(self.name, "duplicate")
                seen.add(key)
        return out


@dataclass(kw_only=True)
class AnswerQuestions(Respond):
    """Questions -> K answers from the policy (ids ``{question}-{j}``), the snippet and the reference
    answer in ``meta`` for the judges."""

    name: str = "answer"
    capability: str = CAPABILITY

    def parse(self, question: FactQuestion, reply: Completion, j: int, messages: Any) -> SFTRecord:
        if not reply.text.strip():
            raise Reject("empty_reply")
        rec = super().parse(question, reply, j, messages)
        rec.meta.update(question=question.question, reference=question.reference, snippet=question.snippet,
                        snippet_id=question.snippet_id)  # fmt: skip
        return rec


def judged_answer(rec: SFTRecord) -> dict[str, str]:
    """The judges' variables for one answer."""
    return {
        "snippet": rec.meta["snippet"],
        "question": rec.meta["question"],
        "reference": rec.meta["reference"],
        "answer": rec.response or "",
    }


def as_messages(question: str, answer: str) -> list[Message]:
    return [Message(role="user", content=question), Message(role="assistant", content=answer)]
