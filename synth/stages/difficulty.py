"""Difficulty scoring (Llama 3 section 4.2.3, "Difficulty scoring"): Instag intention tags and a
three-point difficulty rating, combined into one number that ranks rows.

The paper: "we score data using two measures of difficulty: Instag (Lu et al., 2023) and Llama-based
scoring. For Instag, we prompt Llama 3 70B to perform intention tagging of SFT prompts, where more
intentions implies more complexity. We also prompt Llama 3 to measure the difficulty (Liu et al.,
2024c) of dialogs on a three-point scale."

Both are LLM stages (``synth.stages.llm.LLMStage``: prompt file, length budget, one batched
``generate``) that annotate their input rows in place (the row keeps its id and provenance; the
annotating model is in ``meta``):

- ``InstagTags`` (``quality/instag``): the tags, parsed leniently from the reply (a JSON list, or
  items split on commas, semicolons and new lines; bullets, numbering and quotes stripped; tags of
  more than ``max_tag_words`` words dropped as sentences; deduplicated, lowercased), in
  ``meta["instag"]``; their number in ``scores["instag_count"]``.
- ``DifficultyRating`` (``quality/difficulty``): ``scores["difficulty_rating"]`` on the 1-3 scale:
  where the engine offers ``choice_logprobs`` it is the expectation over the whole labels " 1", " 2",
  " 3" after "Difficulty:" (as the judge reads 1..10, ``synth.stages.judge``), a real number in
  [1, 3]; else the integer the reply wrote ("Difficulty: 2", "2/3", "hard" ...).
  ``meta["difficulty_rating_method"]`` says which ("logprobs" or "text").

Beyond the paper, which names the two measures but not how they combine: the combined
``scores["difficulty"]`` in [0, 1] is the mean of the components present:
``(rating - 1) / 2`` and ``min(instag_count, max_tags) / max_tags`` (``max_tags`` = 10, our cap, the
paper gives none: past ten intentions a prompt ranks as the most complex). Each stage writes
its component into ``meta["difficulty_parts"]`` and recomputes the mean, so either stage alone, or
both in either order, leave a consistent number.

Difficulty ranks, it does not filter (the paper uses it to prioritise, not to drop): a reply that
cannot be parsed, a prompt too long for the engine or a row without a user prompt keeps the row,
with its component at a neutral 0.5, the verdict reason 'difficulty_unparsed' (a *kept* verdict) and
why in ``meta["difficulty_unparsed"][component]`` ("no_tags", "no_rating", "prompt_too_long",
"no_prompt"); the component's own score is then absent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from synth.engines.base import Completion, Request, SamplingParams
from synth.prompts import load_prompt
from synth.stages.judge import _has_choice_logprobs, expected_score, question_answer
from synth.stages.llm import LLMStage, Reject

NEUTRAL = 0.5  # a component that could not be read
MAX_TAGS = 10  # Instag counts above this add nothing to the rank
RATING_CHOICES = (" 1", " 2", " 3")


def _greedy(max_tokens: int) -> Any:
    return field(default_factory=lambda: SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens))


def prompt_variables(rec: Any) -> dict[str, str]:
    """The conversation before the response: ``history`` and ``question`` (the last user turn), as
    the judge renders them (an SFT or a preference row: only its prompt is read)."""
    qa = question_answer(SimpleNamespace(prompt=rec.prompt, response=None))
    return {"history": qa["history"], "question": qa["question"]}


def has_prompt(rec: Any) -> bool:
    prompt = getattr(rec, "prompt", None)
    return isinstance(prompt, list) and any(
        getattr(m, "role", None) == "user" and (m.content or "").strip() for m in prompt
    )


def combined_difficulty(parts: dict[str, float]) -> float:
    """The mean of the components (each in [0, 1]); NEUTRAL without any."""
    return round(sum(parts.values()) / len(parts), 4) if parts else NEUTRAL


@dataclass(kw_only=True)
class _Annotate(LLMStage):
    """An ``LLMStage`` that annotates its input rows in place, one greedy reply each, and never
    drops a row: ``annotate`` raises ``Reject`` for a reply it cannot read, and the row is kept with
    the component at NEUTRAL (module docstring)."""

    capability: str = "general"  # rows keep their own provenance; this only names the stage's use
    component: str = ""  # the key in meta["difficulty_parts"] / meta["difficulty_unparsed"]
    reply_key: str = ""  # the meta key that holds the raw reply

    def __post_init__(self) -> None:
        if self.sampling.n != 1:
            raise ValueError(f"{self.name}: one reply per row (sampling.n = 1), got n={self.sampling.n}")

    def variables(self, item: Any) -> dict[str, Any]:
        return prompt_variables(item)

    def asks(self, item: Any) -> bool:
        return has_prompt(item)

    def annotate(self, item: Any, text: str, dist: dict[str, float] | None) -> float:
        """Write the stage's scores and meta; return its component in [0, 1] (or raise Reject)."""
        raise NotImplementedError

    def distributions(self, requests: list[Request]) -> list[dict[str, float] | None]:
        """Per request, the choice distribution the score may be read from (None: none)."""
        return [None] * len(requests)

    def parse(self, item: Any, reply: Completion, j: int, messages: list[dict[str, str]]) -> Any:
        self._score(item, reply.text, None)
        return item

    def __call__(self, items: list[Any]) -> list[Any]:
        asked = [item for item in items if self.asks(item)]
        requests = [Request.chat(self.messages(item), id=str(item.id)) for item in asked]
        too_long = self.too_long(requests)
        go = [i for i in range(len(asked)) if i not in too_long]
        todo = [requests[i] for i in go]
        replies = self.engine.generate(todo, self.sampling) if todo else []
        dists = self.distributions(todo) if todo else []
        answers = {id(asked[i]): (c[0].text, d) for i, c, d in zip(go, replies, dists, strict=True)}
        long_items = {id(asked[i]): detail for i, detail in too_long.items()}
        for item in items:
            if id(item) in answers:
                self._score(item, *answers[id(item)])
            elif id(item) in long_items:
                self._neutral(item, "prompt_too_long", long_items[id(item)])
            else:
                self._neutral(item, "no_prompt")
        return items

    def _score(self, item: Any, text: str, dist: dict[str, float] | None) -> None:
        item.meta[self.reply_key] = text
        item.meta[f"{self.component}_model"] = self.engine.model
        try:
            part = self.annotate(item, text, dist)
        except Reject as r:
            self._neutral(item, r.reason)
            return
        self._set_part(item, part)
        unparsed = item.meta.get("difficulty_unparsed")
        if unparsed:  # a rerun of the stage that now reads the reply
            unparsed.pop(self.component, None)
        item.keep(self.name)

    def _neutral(self, item: Any, why: str, detail: str = "") -> None:
        item.meta.setdefault("difficulty_unparsed", {})[self.component] = why
        if detail:
            item.meta[f"{self.component}_detail"] = detail
        self._set_part(item, NEUTRAL)
        item.keep(self.name, "difficulty_unparsed")

    def _set_part(self, item: Any, part: float) -> None:
        parts = item.meta.setdefault("difficulty_parts", {})
        parts[self.component] = round(part, 4)
        item.scores["difficulty"] = combined_difficulty(parts)


# -- Instag -------------------------------------------------------------------------------------
_TAGS_HEADER = re.compile(r"^\W*(?:intention\s+)?tags?\s*[:=-]\s*", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)]|#+)\s*")
_JSON_LIST = re.compile(r"\[.*?\]", re.DOTALL)


def parse_tags(text: str, max_words: int = 4) -> list[str]:
    """Short intention tags from a reply, leniently: a JSON list (of strings, or of objects with a
    "tag" key, as Instag writes them), else items split on commas, semicolons and new lines, with a
    "Tags:" header, bullets, numbering and quotes stripped. Tags of more than ``max_words`` words
    (sentences, not tags) and tags without a letter are dropped; the rest lowercased, in order, once."""
    items: list[str] = []
    m = _JSON_LIST.search(text)
    if m:
        try:
            data = json.loads(m.group(0))
        except ValueError:
            data = None
        if isinstance(data, list):
            for x in data:
                if isinstance(x, dict):
                    x = x.get("tag", "")
                if isinstance(x, str):
                    items.append(x)
    if not items:
        for line in text.splitlines():
            line = _TAGS_HEADER.sub("", line.strip())
            items.extend(re.split(r"[,;]", line))
    out: dict[str, None] = {}
    for item in items:
        tag = _BULLET.sub("", item).strip().strip("\"'`*.").strip().lower()
        tag = re.sub(r"\s+", " ", tag)
        if tag and re.search(r"[^\W\d_]", tag) and len(tag.split()) <= max_words:
            out[tag] = None
    return list(out)


@dataclass(kw_only=True)
class InstagTags(_Annotate):
    """Instag intention tags of each row's prompt: ``meta["instag"]``, ``scores["instag_count"]``,
    the reply in ``meta["instag_reply"]``; component ``min(count, max_tags) / max_tags``."""

    name: str = "instag"
    sampling: SamplingParams = _greedy(48)
    prompt: Any = field(default_factory=lambda: load_prompt("quality/instag"))
    component: str = "instag"
    reply_key: str = "instag_reply"
    max_tags: int = MAX_TAGS
    max_tag_words: int = 4

    def annotate(self, item: Any, text: str, dist: dict[str, float] | None) -> float:
        tags = parse_tags(text, self.max_tag_words)
        if not tags:
            raise Reject("no_tags")
        item.meta["instag"] = tags
        item.scores["instag_count"] = float(len(tags))
        return min(len(tags), self.max_tags) / self.max_tags


# -- the three-point rating ---------------------------------------------------------------------
_RATING = re.compile(
    r"(?:difficulty|rating|score|level)\W{0,3}\s*(?:is\s*)?([1-3])\b(?!\s*[.,]\d)", re.IGNORECASE
)
_OUT_OF = re.compile(r"\b([1-3])\s*(?:/\s*3|out of 3)\b", re.IGNORECASE)
_LEADING = re.compile(r"^\W*([1-3])\b(?!\s*[.,/]\d)")
_LABEL = re.compile(
    r"(?:difficulty|rating|level)\W{0,3}\s*(?:is\s*)?(easy|simple|medium|moderate|intermediate|hard|difficult|challenging)\b",
    re.IGNORECASE,
)
_LABELS = {"easy": 1, "simple": 1, "medium": 2, "moderate": 2, "intermediate": 2}


def parse_rating(text: str) -> int | None:
    """The 1-3 rating a reply wrote, leniently: "Difficulty: 2", "2/3", "2 out of 3", a reply that
    starts with the number, or "Difficulty: hard" (easy/medium/hard and synonyms); None otherwise."""
    for pattern in (_RATING, _OUT_OF, _LEADING):
        m = pattern.search(text)
        if m:
            return int(m.group(1))
    m = _LABEL.search(text)
    if m:
        return _LABELS.get(m.group(1).lower(), 3)
    return None


@dataclass(kw_only=True)
class DifficultyRating(_Annotate):
    """Llama-based difficulty of each row's dialog on a three-point scale: ``scores
    ["difficulty_rating"]`` in [1, 3] (an expectation where the engine gives probabilities, else the
    written integer), the reply in ``meta["difficulty_reply"]``; component ``(rating - 1) / 2``."""

    name: str = "difficulty_rating"
    sampling: SamplingParams = _greedy(32)
    prompt: Any = field(default_factory=lambda: load_prompt("quality/difficulty"))
    component: str = "difficulty_rating"
    reply_key: str = "difficulty_reply"
    use_logprobs: bool = True  # when the engine offers choice_logprobs

    def distributions(self, requests: list[Request]) -> list[dict[str, float] | None]:
        if not (self.use_logprobs and _has_choice_logprobs(self.engine)):
            return [None] * len(requests)
        return list(self.engine.choice_logprobs(requests, "Difficulty:", list(RATING_CHOICES)))

    def annotate(self, item: Any, text: str, dist: dict[str, float] | None) -> float:
        written = parse_rating(text)
        expected = expected_score(dist) if dist else None
        if expected is not None:
            rating, method = round(expected, 4), "logprobs"
        elif written is not None:
            rating, method = float(written), "text"
        else:
            raise Reject("no_rating")
        item.scores["difficulty_rating"] = rating
        item.meta["difficulty_rating_method"] = method
        item.meta["difficulty_text_rating"] = written
        return (rating - 1.0) / 2.0
