"""The multilingual recipe's typed working items: a pair of parallel sentences, and one translation
task made from it (or from a problem), which carries the model's translation and back-translation."""

from __future__ import annotations

from typing import Literal

from synth.records import Item, NonEmpty, register_kind

CAPABILITY = "multilingual"


@register_kind
class ParallelPair(Item):
    """Two sentences that say the same thing in two languages (ISO 639-1 codes)."""

    kind: Literal["parallel_pair"] = "parallel_pair"
    source_language: NonEmpty
    source: NonEmpty
    target_language: NonEmpty
    target: NonEmpty


@register_kind
class Translation(Item):
    """``source`` (in ``source_language``) to translate into ``target_language``; ``reference`` is the
    human translation where the text came from parallel data."""

    kind: Literal["translation"] = "translation"
    pair_id: str
    source_language: str
    target_language: str
    source: NonEmpty
    reference: str | None = None
    translation: str | None = None
    back_translation: str | None = None

    @property
    def group_key(self) -> str:
        return self.pair_id
