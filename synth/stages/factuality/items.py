"""The factuality recipe's typed working items: a snippet of the corpus, and a question about it with
the short answer the snippet gives. The policy's answers are ``SFTRecord``s (question, answer) whose
``meta`` names their question: they are judged, selected and exported as they are."""

from __future__ import annotations

from typing import Literal

from synth.records import Item, Message, NonEmpty, register_kind

CAPABILITY = "factuality"


@register_kind
class Snippet(Item):
    """A passage of the corpus (``source``: its file and paragraph)."""

    kind: Literal["snippet"] = "snippet"
    text: NonEmpty
    source: str = ""


@register_kind
class FactQuestion(Item):
    """A factual question about a snippet, and the answer the snippet gives (``reference``)."""

    kind: Literal["fact_question"] = "fact_question"
    snippet_id: str
    snippet: NonEmpty
    question: NonEmpty
    reference: NonEmpty

    @property
    def prompt(self) -> list[Message]:
        return [Message(role="user", content=self.question)]

    def as_prompt(self) -> list[Message]:
        return self.prompt
