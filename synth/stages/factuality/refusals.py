"""Refusals for questions the model answers informatively but consistently wrong (Llama 3's step 6),
and the rows they make.

- ``WriteRefusal``: the most informative wrong answer of such a question -> a refusal to the question
  (``synth/prompts/factuality/refusal.yaml``), an SFT row (the question, the refusal; id
  ``{question}-refusal``). A reply that does not refuse is rejected ('not_a_refusal').
- ``RefusalPairs``: each refusal row -> a preference row, the refusal (chosen) over the confident wrong
  answer it replaces (rejected).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synth.engines.base import Completion
from synth.prompts import load_prompt
from synth.records import Message, PreferenceRecord, Response, SFTRecord
from synth.stages.factuality.items import CAPABILITY
from synth.stages.factuality.questions import as_messages
from synth.stages.factuality.refusal import is_refusal
from synth.stages.llm import LLMStage, Reject


@dataclass(kw_only=True)
class WriteRefusal(LLMStage):
    """Confident wrong answers -> a refusal each."""

    name: str = "write_refusals"
    capability: str = CAPABILITY

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = load_prompt("factuality/refusal")

    def variables(self, wrong: SFTRecord) -> dict[str, str]:
        return {"question": wrong.meta["question"]}

    def output_id(self, wrong: SFTRecord, j: int) -> str:
        return f"{wrong.meta['prompt_id']}-refusal"

    def parse(self, wrong: SFTRecord, reply: Completion, j: int, messages: Any) -> SFTRecord:
        text = reply.text.strip()
        if not is_refusal(text):
            raise Reject("not_a_refusal")
        return SFTRecord(
            id=self.output_id(wrong, j),
            messages=as_messages(wrong.meta["question"], text),
            scores={k: v for k, v in wrong.scores.items() if k in ("correctness", "informativeness")},
            meta={
                "prompt_id": wrong.meta["prompt_id"],
                "question": wrong.meta["question"],
                "reference": wrong.meta["reference"],
                "snippet_id": wrong.meta.get("snippet_id"),
                "wrong_answer": wrong.response,
                "wrong_answer_id": wrong.id,
                "probe": wrong.meta.get("probe"),
            },
        )


@dataclass
class RefusalPairs:
    """Refusal rows -> refusal-over-wrong-answer preference rows."""

    name: str = "refusal_pairs"

    def __call__(self, refusals: list[SFTRecord]) -> list[PreferenceRecord]:
        out = []
        for r in refusals:
            wrong = r.meta.get("wrong_answer") or ""
            if not wrong.strip() or wrong.strip() == (r.response or "").strip():
                continue
            pair = PreferenceRecord(
                id=f"{r.id}-pair",
                prompt=[Message(role="user", content=r.meta["question"])],
                responses=[
                    Response(content=r.response or "", label="chosen"),
                    Response(content=wrong, label="rejected", score=r.scores.get("informativeness")),
                ],
                provenance=r.provenance,
                scores=dict(r.scores),
                meta={
                    "prompt_id": r.meta["prompt_id"],
                    "refusal_id": r.id,
                    "wrong_answer_id": r.meta["wrong_answer_id"],
                },
            )
            pair.keep(self.name)
            out.append(pair)
        return out
