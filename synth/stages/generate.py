"""The generate stage: K sampled responses to each prompt row's own chat, each a candidate SFT row."""

from __future__ import annotations

from dataclasses import dataclass

from synth.engines.base import Completion
from synth.records import Message, SFTRecord
from synth.stages.llm import LLMStage


@dataclass(kw_only=True)
class Respond(LLMStage):
    """Prompt rows -> K candidate rows per prompt (ids ``{prompt}-{j}``); an empty reply stays a
    prompt-only row, which rule cleaning rejects as 'empty'."""

    name: str = "generate"

    def output_id(self, item: SFTRecord, j: int) -> str:
        return f"{item.id}-{j}"

    def parse(self, item: SFTRecord, reply: Completion, j: int, messages) -> SFTRecord:
        msgs = list(item.prompt)
        if reply.text.strip():
            msgs.append(Message(role="assistant", content=reply.text))
        capability = item.provenance.capability if item.provenance else self.capability
        rec = SFTRecord(
            id=self.output_id(item, j),
            messages=msgs,
            meta={
                "prompt_id": item.id,
                "sample": j,
                "finish_reason": reply.finish_reason,
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
            },
        )
        rec.provenance = self.provenance(item)
        rec.provenance.capability = capability if self.capability == "*" else self.capability
        return rec
