"""The generate stage: K sampled responses per prompt, each a candidate SFT record."""

from __future__ import annotations

from dataclasses import dataclass

from synth.engines.base import Engine, Request, SamplingParams
from synth.records import Message, Provenance, SFTRecord


@dataclass
class Respond:
    """Callable stage: prompt records -> K candidate records per prompt (ids ``{prompt}-{j}``)."""

    engine: Engine
    sampling: SamplingParams
    capability: str
    template: str = "passthrough"
    template_version: str = "1"
    round: int = 0

    def __call__(self, prompts: list[SFTRecord]) -> list[SFTRecord]:
        requests = [
            Request.chat([m.model_dump(exclude_none=True) for m in p.prompt], id=p.id) for p in prompts
        ]
        outputs = self.engine.generate(requests, self.sampling)
        out = []
        for prompt, comps in zip(prompts, outputs, strict=True):
            for j, comp in enumerate(comps):
                messages = list(prompt.prompt)
                if comp.text.strip():
                    messages.append(Message(role="assistant", content=comp.text))
                rec = SFTRecord(
                    id=f"{prompt.id}-{j}",
                    messages=messages,
                    provenance=self.provenance(prompt),
                    meta={
                        "prompt_id": prompt.id,
                        "sample": j,
                        "finish_reason": comp.finish_reason,
                        "prompt_tokens": comp.prompt_tokens,
                        "completion_tokens": comp.completion_tokens,
                    },
                )
                out.append(rec)
        return out

    def provenance(self, prompt: SFTRecord) -> Provenance:
        source = prompt.provenance.source if prompt.provenance else None
        return Provenance(
            capability=self.capability,
            model=self.engine.model,
            engine=self.engine.name,
            template=self.template,
            template_version=self.template_version,
            sampling=self.sampling.to_dict(),
            seed=self.sampling.seed,
            round=self.round,
            source=source,
        )
