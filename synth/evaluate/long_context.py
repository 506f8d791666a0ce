"""Long context: question answering over a document given whole in the prompt.

Llama 3 evaluates long context with needle-in-a-haystack retrieval, ZeroSCROLLS and InfiniteBench
(section 5.2.7): the answer is somewhere in a long input and the model must find it. This check is the
small, held-out version of that: documents of a few paragraphs written for the project (no recipe reads
them), each with short questions whose answers are stated once in the document
(``pipelines/data/heldout/long_context.jsonl``: ``{"id", "document", "question", "answer",
"aliases"?}``, ``document`` a file path relative to the JSONL file, or ``context`` the text itself). The
model answers greedily; a reply is correct when it states the gold answer or an alias (whole words,
after normalisation: ``synth.stages.factuality.questions.mentions``). Reported: ``accuracy``. It goes
beyond the paper's short-answer scoring only in recording each reply, and in being the same check on
every round's model, so a long-context regression shows up round to round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import StrictStr, model_validator

from synth.engines.base import Engine, Request
from synth.evaluate.common import Progress, greedy_replies, read_rows, share
from synth.io import InputError
from synth.stages.factuality.evaluate import AnsweredQuestion

INSTRUCTION = "Answer the question in a few words, using only the document above."


class LongContextQuestion(AnsweredQuestion):
    document: StrictStr | None = None
    context: StrictStr | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LongContextQuestion:
        if (self.document is None) == (self.context is None):
            raise ValueError("give exactly one of 'document' (a file) or 'context' (the text)")
        return self


def read_questions(path: str | Path, limit: int | None = None) -> list[LongContextQuestion]:
    """The questions of a JSONL file, each with its document's text in ``context``."""
    base = Path(path).parent
    out = []
    for n, row in enumerate(read_rows(path, LongContextQuestion, limit), 1):
        if row.context is None:
            doc = base / str(row.document)
            if not doc.is_file():
                raise InputError(str(path), n, "document", f"no such file: {doc}")
            row = row.model_copy(update={"context": doc.read_text(encoding="utf-8").strip()})
        out.append(row)
    return out


def prompt(row: LongContextQuestion) -> str:
    return f"Document:\n\n{row.context}\n\nQuestion: {row.question}\n{INSTRUCTION}"


def evaluate_long_context(
    engine: Engine,
    rows: list[LongContextQuestion],
    *,
    max_tokens: int = 48,
    batch_size: int = 4,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """``{"accuracy", "n", "results"}``: the share of replies that state the gold answer."""
    if not rows:
        raise ValueError("no long-context questions to evaluate")
    if any(r.context is None for r in rows):
        raise ValueError("long-context rows need their document's text (read them with read_questions)")
    requests = [Request.chat(prompt(r), id=r.id) for r in rows]
    replies = greedy_replies(
        engine, requests, max_tokens=max_tokens, batch_size=batch_size, progress=progress
    )
    results = [
        {"id": r.id, "question": r.question, "answer": r.answer, "correct": r.answered_by(c.text),
         "reply": c.text, "prompt_tokens": c.prompt_tokens}
        for r, c in zip(rows, replies, strict=True)
    ]  # fmt: skip
    return {
        "accuracy": share(sum(x["correct"] for x in results), len(rows)),
        "n": len(rows),
        "results": results,
    }
