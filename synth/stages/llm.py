"""The LLM stage kind: a prompt template plus a parse function; the base owns the rest.

Every stage that asks the model something (respond to a prompt, write a problem, solve it, write
tests, repair, document, translate) is an ``LLMStage``: it names its prompt file and says how a reply
becomes a row (``parse``). The base renders the prompt for each input, asks the engine for the whole
batch at once (``n`` samples each), stamps provenance (capability, model, engine, round, sampling, the
prompt's content hash), writes the verdict under the stage's one name, and keeps a reply that cannot be
parsed (``raise Reject(reason)``) as an ``Unparsed`` row with the raw text and the reason.

Before any engine sees a prompt, the base checks its length where the engine can tell
(``context_length`` and ``count_prompt_tokens``, see ``synth.engines.base``): a prompt whose tokens
exceed the context less ``max_tokens`` becomes one ``Unparsed`` row rejected as 'prompt_too_long'
(``meta["detail"]``: "9,812 tokens > 8,192 - 256"), and the other rows of the batch go on. A huge
prompt is not tokenized in full: its size in bytes, or a prefix, proves it too long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from synth.engines.base import Completion, Engine, Request, SamplingParams, TokenCount
from synth.prompts import Prompt
from synth.records import Provenance, Record, Unparsed


class Reject(Exception):  # noqa: N818 - a verdict, not an error
    """Raised by ``parse`` (the reply is unusable) or an execution stage's ``job`` (nothing to run)
    for ``reason``; ``detail`` says more (e.g. the feedback a repair round gets)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(kw_only=True)
class LLMStage:
    # batches may run in threads at once (Run.overlap): a stage keeps no state across batches
    concurrent: ClassVar[bool] = True
    name: str
    engine: Engine
    sampling: SamplingParams
    capability: str
    prompt: Prompt | None = None  # None: the input row's own chat prompt
    round: int = 0
    _sampling: dict[str, Any] | None = field(default=None, init=False, repr=False)

    # -- what a stage says ---------------------------------------------------------------------
    def variables(self, item: Any) -> dict[str, Any]:
        """The prompt template's variables for one input."""
        return {}

    def parse(self, item: Any, reply: Completion, j: int, messages: list[dict[str, str]]) -> Record:
        """The row for sample ``j`` of ``item``; ``raise Reject(reason)`` when the reply is unusable.
        A row returned with a rejection verdict of this stage stays rejected."""
        raise NotImplementedError

    def asks(self, item: Any) -> bool:
        """Whether the model is asked about ``item``; others pass through kept and unchanged."""
        return True

    def output_id(self, item: Any, j: int) -> str:
        return f"{item.id}-{j}" if self.sampling.n > 1 else item.id

    # -- what the base does --------------------------------------------------------------------
    def messages(self, item: Any) -> list[dict[str, str]]:
        if self.prompt is None:
            return [m.model_dump(exclude_none=True) for m in item.prompt]
        return self.prompt.messages(**self.variables(item))

    def provenance(self, item: Any) -> Provenance:
        source = item.provenance.source if getattr(item, "provenance", None) else None
        if self._sampling is None:
            self._sampling = self.sampling.to_dict()
        # built from trusted values once per row: no validation pass (millions of rows)
        return Provenance.model_construct(
            capability=self.capability,
            model=self.engine.model,
            engine=self.engine.name,
            template=self.prompt.name if self.prompt else "passthrough",
            template_version=self.prompt.hash if self.prompt else "1",
            sampling=dict(self._sampling),
            seed=self.sampling.seed,
            round=self.round,
            source=source,
        )

    def __call__(self, items: list[Any]) -> list[Record]:
        asked = [item for item in items if self.asks(item)]
        conversations = [self.messages(item) for item in asked]
        requests = [Request.chat(c, id=str(item.id)) for item, c in zip(asked, conversations, strict=True)]
        too_long = self.too_long(requests)
        go = [i for i in range(len(asked)) if i not in too_long]
        replies = self.engine.generate([requests[i] for i in go], self.sampling) if go else []
        answers = {id(asked[i]): (conversations[i], comps) for i, comps in zip(go, replies, strict=True)}
        long_items = {id(asked[i]): (conversations[i], detail) for i, detail in too_long.items()}
        out: list[Record] = []
        for item in items:
            if id(item) in long_items:
                out.append(self._too_long_row(item, *long_items[id(item)]))
                continue
            if id(item) not in answers:
                item.keep(self.name)
                out.append(item)
                continue
            conv, comps = answers[id(item)]
            for j, comp in enumerate(comps):
                try:
                    rec = self.parse(item, comp, j, conv)
                except Reject as r:
                    meta = {"finish_reason": comp.finish_reason, "prompt": conv[-1]["content"]}
                    rec = Unparsed(id=self.output_id(item, j), input_id=item.id, raw=comp.text, meta=meta)
                    rec.reject(self.name, r.reason)
                if rec.provenance is None:
                    rec.provenance = self.provenance(item)
                if not any(v.stage == self.name for v in rec.verdicts):
                    rec.keep(self.name)
                out.append(rec)
        return out

    # -- the prompt budget -----------------------------------------------------------------------------
    def too_long(self, requests: list[Request]) -> dict[int, str]:
        """Index -> detail for each request whose prompt leaves no room for ``max_tokens`` in the
        engine's context; {} where the engine cannot tell (no context length or no counter)."""
        engine = getattr(self.engine, "inner", self.engine)  # a cache wrapper counts with its engine
        context = getattr(engine, "context_length", None)
        count = getattr(engine, "count_prompt_tokens", None)
        if not requests or not context or not callable(count):
            return {}
        limit = context - self.sampling.max_tokens
        out = {}
        for i, r in enumerate(requests):
            n: TokenCount | None = count(r, max(limit, 0))
            if n is not None and n.tokens > limit:
                size = f"{n.tokens:,}" if n.exact else f"at least {n.tokens:,}"
                out[i] = f"{size} tokens > {context:,} - {self.sampling.max_tokens:,}"
        return out

    def _too_long_row(self, item: Any, conv: list[dict[str, str]], detail: str) -> Record:
        chars = sum(len(m.get("content") or "") for m in conv)
        preview = conv[-1]["content"][:200] if conv else ""
        meta = {"prompt": preview, "prompt_chars": chars, "detail": detail}
        rec = Unparsed(id=self.output_id(item, 0), input_id=item.id, raw="", meta=meta)
        rec.reject(self.name, "prompt_too_long")
        rec.provenance = self.provenance(item)
        return rec
