"""The one record model that flows through every stage, store, export and trainer.

SFT rows are chat ``messages``; preference rows are a prompt plus 2-3 responses ranked best first
(edited > chosen > rejected) with a strength label. Working items that are not chats (a programming
problem, a candidate program, a tool trace) are typed ``Item`` subclasses, registered by their ``kind``.
All of them carry provenance, scores and the verdicts of every filter they met, so a rejected row always
says which stage dropped it and why.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

Role = Literal["system", "user", "assistant", "tool"]
Strength = Literal["significantly_better", "better", "slightly_better", "marginally_better"]
STRENGTHS: tuple[str, ...] = (
    "significantly_better",
    "better",
    "slightly_better",
    "marginally_better",
)
ResponseLabel = Literal["edited", "chosen", "rejected"]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class _Strict(BaseModel):
    # strict: a number where text belongs is an error, not silently coerced.
    model_config = ConfigDict(extra="forbid", strict=True)


class ToolFunction(_Strict):
    """The function an assistant calls: its name and its arguments as JSON text (OpenAI's shape)."""

    name: NonEmpty
    arguments: str


class ToolCall(_Strict):
    """One tool call of an assistant turn, in OpenAI's tool-calling shape."""

    id: NonEmpty
    type: Literal["function"] = "function"
    function: ToolFunction


class Message(_Strict):
    role: Role
    # OpenAI's tool-calling shape: an assistant turn's calls (before ``content``, which may be empty
    # on such a turn), and the call a tool turn answers; left out of the stored JSON when unset, so
    # rows without tools are written as before
    tool_calls: list[ToolCall] | None = Field(default=None, exclude_if=lambda v: v is None)
    content: str  # non-blank, except on an assistant turn that only calls tools
    name: str | None = None  # tool name for role == "tool"
    tool_call_id: str | None = Field(default=None, exclude_if=lambda v: v is None)

    @field_validator("content")
    @classmethod
    def _not_empty(cls, content: str, info: ValidationInfo) -> str:
        if not content and not info.data.get("tool_calls"):
            raise ValueError("String should have at least 1 character")
        return content

    @model_validator(mode="after")
    def _not_blank(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant turn makes tool calls")
        if self.content and not self.content.strip():
            raise ValueError("content is blank")
        return self


class Provenance(_Strict):
    capability: str
    model: str | None = None
    engine: str | None = None
    template: str | None = None
    template_version: str | None = None
    sampling: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    round: int = 0
    source: str | None = None  # seed file / upstream row the record came from
    # the row's language (ISO 639-1) where a language check established it; left out when unset
    language: str | None = Field(default=None, exclude_if=lambda v: v is None)


class Verdict(_Strict):
    stage: str
    kept: bool
    reason: str | None = None


class _Scored(_Strict):
    id: NonEmpty
    provenance: Provenance | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    verdicts: list[Verdict] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return all(v.kept for v in self.verdicts)

    def reject(self, stage: str, reason: str) -> None:
        self.verdicts.append(Verdict(stage=stage, kept=False, reason=reason))

    def keep(self, stage: str, reason: str | None = None) -> None:
        self.verdicts.append(Verdict(stage=stage, kept=True, reason=reason))

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=False)

    @property
    def group_key(self) -> str:
        """The group a row belongs to for per-group selection (best of K, pairs): its prompt."""
        return self.meta.get("prompt_id", self.id)


class SFTRecord(_Scored):
    kind: Literal["sft"] = "sft"
    messages: list[Message] = Field(min_length=1)
    # the functions the conversation may call, as OpenAI function schemas ({"type": "function",
    # "function": {name, description, parameters}}); left out of the stored JSON when unset
    tools: list[dict[str, Any]] | None = Field(default=None, exclude_if=lambda v: v is None)

    @property
    def prompt(self) -> list[Message]:
        """Messages before the final assistant turn (the whole row if none)."""
        if self.messages[-1].role == "assistant":
            return self.messages[:-1]
        return list(self.messages)

    @property
    def response(self) -> str | None:
        last = self.messages[-1]
        return last.content if last.role == "assistant" else None


class Response(_Strict):
    content: NonEmpty
    label: ResponseLabel
    score: float | None = None


class PreferenceRecord(_Scored):
    kind: Literal["preference"] = "preference"
    prompt: list[Message] = Field(min_length=1)
    responses: list[Response] = Field(min_length=2, max_length=3)  # best first
    strength: Strength | None = None

    @model_validator(mode="after")
    def _ranked(self) -> PreferenceRecord:
        order = {"edited": 0, "chosen": 1, "rejected": 2}
        labels = [r.label for r in self.responses]
        if labels != sorted(labels, key=order.__getitem__) or len(set(labels)) != len(labels):
            raise ValueError(f"responses must be ranked edited > chosen > rejected, got {labels}")
        if "chosen" not in labels or "rejected" not in labels:
            raise ValueError("responses need a 'chosen' and a 'rejected' entry")
        texts = [r.content.strip() for r in self.responses]
        if len(set(texts)) != len(texts):
            raise ValueError("ranked responses must differ (chosen == rejected)")
        return self

    def by_label(self, label: str) -> Response | None:
        return next((r for r in self.responses if r.label == label), None)

    @property
    def chosen(self) -> Response:
        return self.by_label("chosen")  # type: ignore[return-value]

    @property
    def rejected(self) -> Response:
        return self.by_label("rejected")  # type: ignore[return-value]


class Item(_Scored):
    """A typed working item a recipe carries between stages (not a chat, not exported as one).

    Subclasses declare ``kind: Literal["..."] = "..."`` and their own typed fields, and are registered
    with ``@register_kind`` so the store reads them back as the right class.
    """

    kind: str

    def as_prompt(self) -> list[Message] | None:
        """The chat prompt this item stands for, when it can seed sampling (rejection sampling)."""
        return None


class Unparsed(Item):
    """An LLM reply a stage could not use: kept as a rejection with the raw text and the reason."""

    kind: Literal["unparsed"] = "unparsed"
    input_id: str
    raw: str


_KINDS: dict[str, type[_Scored]] = {}


def register_kind(cls: type[_Scored]) -> type[_Scored]:
    """Class decorator: rows of this ``kind`` are read back as ``cls``."""
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} needs a default 'kind'")
    if _KINDS.get(kind, cls) is not cls:
        raise ValueError(
            f"record kind {kind!r} is registered twice ({_KINDS[kind].__name__}, {cls.__name__})"
        )
    _KINDS[kind] = cls
    return cls


for _cls in (SFTRecord, PreferenceRecord, Unparsed):
    register_kind(_cls)


@register_kind
class StepLabelRecord(_Scored):
    """A solution labelled step by step, in TRL's stepwise-supervision format: ``prompt`` (the
    problem), ``completions`` (the steps) and ``labels`` (whether each step is good: a process
    reward model's training row). ``soft_labels``: the share of rollouts from each step that reached
    the right answer (Math-Shepherd's soft label), when the labels come from rollouts."""

    kind: Literal["step_labels"] = "step_labels"
    prompt: NonEmpty
    completions: list[NonEmpty] = Field(min_length=1)
    labels: list[bool]
    soft_labels: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_label_per_step(self) -> StepLabelRecord:
        n = len(self.completions)
        if len(self.labels) != n or (self.soft_labels and len(self.soft_labels) != n):
            raise ValueError(f"{n} steps need {n} labels, got {len(self.labels)} and {len(self.soft_labels)}")
        return self


Record = SFTRecord | PreferenceRecord | Item


def record_class(kind: str) -> type[_Scored]:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown record kind {kind!r}; known: {sorted(_KINDS)}") from None


def record_from_dict(data: dict[str, Any]) -> Record:
    """Build the right record type from a dict (``kind`` decides; default sft)."""
    kind = data.get("kind", "preference" if "responses" in data else "sft")
    return record_class(kind).model_validate(data)  # type: ignore[return-value]


def record_from_json(text: str, kind: str | None = None) -> Record:
    """Parse a stored row; with its ``kind`` known (a store column) pydantic parses the JSON directly."""
    if kind is not None:
        return record_class(kind).model_validate_json(text)  # type: ignore[return-value]
    return record_from_dict(json.loads(text))


def stable_id(*parts: Any) -> str:
    """A short deterministic id from any JSON-able parts (same input -> same id across runs)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
