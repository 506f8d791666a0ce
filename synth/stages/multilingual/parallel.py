"""Translation tasks from parallel text (Llama 3's "data from other NLP tasks"), kept by round-trip chrF.

- ``read_parallel``: a JSONL of sentence pairs, ``{"id", "source_language", "source",
  "target_language", "target"}`` per line (ISO 639-1 codes), validated at the boundary, ids unique.
- ``RoundTrip``: a translation whose back-translation into its source language scores a chrF
  (sacrebleu, character n-grams: it works for Thai, which has no spaces between words) of at least
  ``threshold`` against the source becomes an SFT row: the user turn asks, in the target language
  (``instructions`` in ``synth/prompts/multilingual/translate.yaml``), for the translation of the
  source; the assistant turn is the model's translation. Below the threshold: rejected
  'round_trip_below_threshold'. The chrF of the translation against the human reference is recorded
  too (``scores["chrf_reference"]``), not filtered on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.io import BadRow, iter_records
from synth.prompts import load_prompt
from synth.records import Message, Provenance, SFTRecord
from synth.stages.language import check_codes, set_language
from synth.stages.multilingual.items import CAPABILITY, ParallelPair, Translation


def read_parallel(
    path: str | Path,
    *,
    skip_invalid: bool = False,
    on_bad: Callable[[BadRow], None] | None = None,
    limit: int | None = None,
) -> Iterator[ParallelPair]:
    """Parallel pairs of a JSONL file, streamed; the first ``limit`` only when given."""
    name = Path(path).name

    def parse(data: Any) -> ParallelPair:
        if not isinstance(data, dict):
            raise TypeError(f"row must be a JSON object, got {type(data).__name__}")
        data = {"provenance": {"capability": CAPABILITY, "source": name}, **data}
        pair = ParallelPair.model_validate(data)
        check_codes([pair.source_language, pair.target_language])
        return pair

    rows = iter_records(path, parse, skip_invalid=skip_invalid, on_bad=on_bad, unique_ids=True)
    for n, row in enumerate(rows):
        if limit is not None and n >= limit:
            return
        yield row


def chrf(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence chrF (0-100)."""
    from sacrebleu.metrics import CHRF

    return round(float(CHRF().sentence_score(hypothesis, [reference]).score), 4)


@dataclass
class RoundTrip:
    """Back-translated translations -> SFT translation rows, kept when round-trip chrF clears
    ``threshold``."""

    threshold: float = 50.0
    name: str = "round_trip"

    def __post_init__(self) -> None:
        self.instructions: dict[str, str] = load_prompt("multilingual/translate").data["instructions"]

    def __call__(self, tasks: list[Translation]) -> list[SFTRecord]:
        out = []
        for t in tasks:
            instruction = self.instructions.get(t.target_language)
            user = f"{instruction}\n\n{t.source}" if instruction else t.source
            rec = SFTRecord(
                id=t.id,
                messages=[
                    Message(role="user", content=user),
                    Message(role="assistant", content=t.translation),
                ],
                provenance=(t.provenance or Provenance(capability=CAPABILITY)).model_copy(),
                scores={
                    "chrf_round_trip": chrf(t.back_translation or "", t.source),
                    "chrf_reference": chrf(t.translation or "", t.reference) if t.reference else 0.0,
                },
                meta={
                    "prompt_id": t.id,
                    "pair_id": t.pair_id,
                    "source_language": t.source_language,
                    "target_language": t.target_language,
                    "reference": t.reference,
                    "back_translation": t.back_translation,
                    "lid": t.meta.get("lid", {}),
                },
            )
            set_language(rec, t.target_language)
            if rec.scores["chrf_round_trip"] < self.threshold:
                rec.reject(self.name, "round_trip_below_threshold")
            else:
                rec.keep(self.name)
            out.append(rec)
        return out
