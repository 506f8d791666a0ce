"""Translation: problems into each target language, parallel sentences both ways, and back again.

All three are ``LLMStage``s over ``synth/prompts/multilingual/translate.yaml`` (one example sentence
in both languages as the few-shot turn). A reply is cut to the translation: a leading "Translation:"
label and wrapping quotes go, and so does anything after the first blank line (small models go on to
explain). Rejections: 'empty_translation'; 'untranslated' when the reply is the source; for problems,
'numbers_changed' when the numbers of the text (digits of any script: ५, ๕ and 5 are the same number)
are not those of the source, since a problem's gold answer is carried over unchanged and must still be
its answer (parallel text is not checked so: "eight" may become "8", and round-trip chrF judges it).

- ``TranslateProblems``: each problem (``MathProblem``) -> one translated problem per target language
  other than the problems' own (id ``{problem}-{lang}``), the gold answer unchanged, the source in
  ``meta``.
- ``TranslatePairs``: each parallel pair -> two ``Translation`` tasks, source to target and target to
  source (ids ``{pair}-{from}-{to}``), each with the other side as its human reference; a pair in a
  language that is not a target (nor English) is rejected 'untargeted_language'.
- ``BackTranslate``: a translation back into its source language (for round-trip chrF).

Every row they write records the language it is meant to be in (``provenance.language``): the target.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from synth.engines.base import Completion
from synth.records import Provenance, Record
from synth.stages.language import language_name
from synth.stages.llm import LLMStage, Reject
from synth.stages.math.items import MathProblem
from synth.stages.multilingual.items import CAPABILITY, Translation

_LABEL = re.compile(r"^\s*\**\s*(?:translation|traduction|traduzione|tradução|traducción|Übersetzung)"
                    r"\s*(?:\([^)]*\))?\s*\**\s*:\s*\**\s*", re.IGNORECASE)  # fmt: skip
_QUOTES = ('""', "''", "“”", "«»", "„“", "‘’")
_DIGITS = re.compile(r"\d+")  # \d is any script's decimal digit


def numbers(text: str) -> Counter[int]:
    """The numbers a text states, as a multiset (digit runs of any script: "१२" == "12")."""
    return Counter(int(m) for m in _DIGITS.findall(text))


def clean_translation(reply: str) -> str:
    """The translation in a reply: no label, no wrapping quotes, nothing after the first blank line."""
    text = reply.strip()
    text = _LABEL.sub("", text, count=1).strip()
    text = re.split(r"\n\s*\n", text, maxsplit=1)[0].strip()
    for left, right in _QUOTES:
        if len(text) > 2 and text[0] == left[0] and text[-1] == right[-1]:
            text = text[1:-1].strip()
    return text


@dataclass(kw_only=True)
class Translate(LLMStage):
    """The translation stage kind: what to translate (``task``), from and into which language."""

    capability: str = CAPABILITY
    check_numbers: bool = True
    _examples: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.prompt is None:
            from synth.prompts import load_prompt

            self.prompt = load_prompt("multilingual/translate")
        self._examples = dict(self.prompt.data.get("examples") or {})

    def languages_of(self, item: Any) -> tuple[str, str]:
        """(from, into) of one input."""
        raise NotImplementedError

    def text_of(self, item: Any) -> str:
        raise NotImplementedError

    def variables(self, item: Any) -> dict[str, str]:
        src, tgt = self.languages_of(item)
        return {
            "source_name": language_name(src),
            "target_name": language_name(tgt),
            "text": self.text_of(item),
            "shot_source": self._examples[src],
            "shot_target": self._examples[tgt],
        }

    def provenance(self, item: Any) -> Provenance:
        p = super().provenance(item)
        p.language = self.languages_of(item)[1]
        return p

    def translation(self, item: Any, reply: Completion) -> str:
        """The checked translation of ``item`` in ``reply`` (raises ``Reject``)."""
        text = clean_translation(reply.text)
        source = self.text_of(item)
        if not text:
            raise Reject("empty_translation")
        if text.strip().lower() == source.strip().lower():
            raise Reject("untranslated")
        if self.check_numbers and numbers(text) != numbers(source):
            raise Reject("numbers_changed")
        return text


def missing_examples(prompt_data: dict[str, Any], languages: list[str]) -> list[str]:
    """The languages a prompt file has no few-shot example for."""
    examples = prompt_data.get("examples") or {}
    return [lang for lang in languages if lang not in examples]


@dataclass(kw_only=True)
class TranslateProblems(Translate):
    """Problems -> one translation per target language, the gold answer carried over unchanged."""

    name: str = "translate_problems"
    languages: tuple[str, ...]
    source_language: str = "en"

    def __call__(self, items: list[Any]) -> list[Record]:
        tasks = []
        for prob in items:
            for lang in self.languages:
                if lang == self.source_language:  # nothing to translate
                    continue
                task = prob.model_copy(deep=True)
                task.id = f"{prob.id}-{lang}"
                task.meta = {**prob.meta, "language": lang, "source_problem_id": prob.id}
                tasks.append(task)
        return super().__call__(tasks)

    def languages_of(self, prob: MathProblem) -> tuple[str, str]:
        return self.source_language, prob.meta["language"]

    def text_of(self, prob: MathProblem) -> str:
        return prob.problem

    def parse(self, task: MathProblem, reply: Completion, j: int, messages: Any) -> MathProblem:
        text = self.translation(task, reply)
        return MathProblem(
            id=task.id,
            problem=text,
            answer=task.answer,  # the gold answer, unchanged
            source=task.source,
            meta={
                "language": task.meta["language"],
                "source_problem_id": task.meta["source_problem_id"],
                "source_problem": task.problem,
                "source_language": self.source_language,
            },
        )


@dataclass(kw_only=True)
class TranslatePairs(Translate):
    """Parallel pairs -> two translation tasks each (both directions), translated by the model."""

    name: str = "translate"
    languages: tuple[str, ...] | None = None  # both sides must be one of these (None: any)
    check_numbers: bool = False  # "eight" may become "8": round-trip chrF judges fidelity here

    def __call__(self, items: list[Any]) -> list[Record]:
        tasks, untargeted = [], []
        for pair in items:
            if self.languages is not None and not {pair.source_language, pair.target_language} <= set(
                self.languages
            ):
                pair.reject(self.name, "untargeted_language")
                untargeted.append(pair)
                continue
            for src, text, tgt, ref in (
                (pair.source_language, pair.source, pair.target_language, pair.target),
                (pair.target_language, pair.target, pair.source_language, pair.source),
            ):
                tasks.append(
                    Translation(
                        id=f"{pair.id}-{src}-{tgt}",
                        pair_id=pair.id,
                        source_language=src,
                        target_language=tgt,
                        source=text,
                        reference=ref,
                        provenance=pair.provenance,
                        meta={"language": tgt},
                    )
                )
        return super().__call__(tasks) + untargeted

    def languages_of(self, task: Translation) -> tuple[str, str]:
        return task.source_language, task.target_language

    def text_of(self, task: Translation) -> str:
        return task.source

    def parse(self, task: Translation, reply: Completion, j: int, messages: Any) -> Translation:
        out = task.model_copy(deep=True)
        out.translation = self.translation(task, reply)
        out.provenance = None  # stamped by the base: this stage's template, model and language
        return out


@dataclass(kw_only=True)
class BackTranslate(Translate):
    """A translation -> the same, with the model's translation of it back into the source language."""

    name: str = "back_translate"
    check_numbers: bool = False

    def languages_of(self, task: Translation) -> tuple[str, str]:
        return task.target_language, task.source_language

    def text_of(self, task: Translation) -> str:
        return task.translation or ""

    def provenance(self, item: Translation) -> Provenance:
        p = super().provenance(item)
        p.language = item.target_language  # the row is still the translation into the target
        return p

    def parse(self, task: Translation, reply: Completion, j: int, messages: Any) -> Translation:
        out = task.model_copy(deep=True)
        out.back_translation = self.translation(task, reply)
        return out
