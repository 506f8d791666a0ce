"""Response language: the share of replies written in the language of their prompt.

Llama 3's multilingual data is filtered so that a response is in its prompt's language (section 4.3.2,
"language mismatch" among the rule-based filters), and it evaluates multilingual ability on MGSM and
multilingual MMLU (section 5.2.5). This check measures the property the filter enforces, on the model
itself: held-out prompts in several languages (``pipelines/data/heldout/language.jsonl``:
``{"id", "language", "prompt"}``, ISO 639-1 codes), one greedy reply each, identified with the
project's detector (``synth.stages.language.LanguageID``, lingua by default, with its abstention: a reply
too short or too uncertain to identify does not match). Reported: ``match_rate`` (over all prompts),
``abstain_rate``, and the match rate of each language.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from synth.engines.base import Engine, Request
from synth.evaluate.common import Progress, greedy_replies, read_rows, share
from synth.stages.language import CANDIDATES, LanguageID, check_codes


class LanguagePrompt(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: StrictStr
    language: StrictStr
    prompt: StrictStr = Field(min_length=1)

    @field_validator("language")
    @classmethod
    def _known(cls, code: str) -> str:
        check_codes([code])
        return code


def read_prompts(path: str | Path, limit: int | None = None) -> list[LanguagePrompt]:
    return list(read_rows(path, LanguagePrompt, limit))


def evaluate_language(
    engine: Engine,
    rows: list[LanguagePrompt],
    *,
    max_tokens: int = 96,
    batch_size: int = 16,
    backend: str = "lingua",
    min_chars: int = 20,
    min_confidence: float = 0.3,
    detector: LanguageID | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """``{"match_rate", "abstain_rate", "by_language", "n", "results"}`` on ``rows``."""
    if not rows:
        raise ValueError("no language prompts to evaluate")
    languages = tuple(dict.fromkeys([*CANDIDATES, *(r.language for r in rows)]))
    lid = detector or LanguageID(backend, languages, min_chars=min_chars, min_confidence=min_confidence)
    requests = [Request.chat(r.prompt, id=r.id) for r in rows]
    replies = greedy_replies(
        engine, requests, max_tokens=max_tokens, batch_size=batch_size, progress=progress
    )
    results = []
    for row, reply in zip(rows, replies, strict=True):
        d = lid.detect(reply.text)
        results.append({"id": row.id, "language": row.language, "detected": d.language, "top": d.top,
                        "confidence": d.confidence, "reason": d.reason, "match": d.language == row.language,
                        "reply": reply.text})  # fmt: skip
    n = len(rows)
    per = Counter(r["language"] for r in results)
    hits = Counter(r["language"] for r in results if r["match"])
    return {
        "match_rate": share(sum(r["match"] for r in results), n),
        "abstain_rate": share(sum(r["detected"] is None for r in results), n),
        "by_language": {lang: share(hits[lang], per[lang]) for lang in sorted(per)},
        "n": n,
        "results": results,
    }
