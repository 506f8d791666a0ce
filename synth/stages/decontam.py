"""Decontamination: drop rows whose prompts overlap held-out evaluation sets, by word n-grams.

Llama 3 measures contamination of its benchmarks with 8-grams (section 5.1.4, "Contamination
analysis", after Singh et al., 2024): "we consider an example of a dataset D to be contaminated if a
ratio T_D of its tokens are part of an 8-gram occurring at least once in the pre-training corpus",
with T_D chosen per dataset. Here the same measure guards the synthetic data: every prompt is checked
against the held-out prompts before it becomes a training row. Defaults: ``n = 8`` (the paper's
n-gram: long enough that a shared 8-gram is a copied span, not a common phrase) and ``threshold =
0.5`` (the paper tunes T_D per benchmark and does not publish one number; half the words covered
by shared 8-grams flags a copy or a close paraphrase that keeps long verbatim spans, while a prompt
on the same topic, sharing a phrase or two, stays below it).

Text is normalised to words: lowercased, punctuation stripped (runs of letters and digits). A row's
prompt is its user turns (each turn on its own, so no n-gram spans two turns). For a row and one
held-out item, the shared n-grams cover a share of the row's words and a share of the item's words;
the overlap is the larger of the two, so a prompt that embeds a whole held-out item inside a long
context is caught (the item's share), as is a short prompt cut from a long item (the row's share).
A row is contaminated when its overlap with one item reaches ``threshold``. Held-out items shorter
than ``n`` words have no n-gram: such an item (of at least ``min_words`` words: two or three words
are a phrase, not an evaluation item) contaminates a row whose words contain it whole, contiguously
(overlap 1.0). Rows shorter than ``n`` words are checked only that way.

Beyond the paper, which measures contamination of benchmarks against pre-training data rather than
filtering post-training data: ``Decontaminate`` rejects contaminated rows ('contaminated', with
``meta["contaminated_by"] = {"set", "item", "overlap"}``) and ``contamination_report`` lists them
for a run's report. ``read_held_out`` reads the evaluation sets from JSONL files.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

N = 8  # Llama 3's contamination n-gram
THRESHOLD = 0.5
MIN_WORDS = 4
_WORD = re.compile(r"[^\W_]+")
PROMPT_FIELDS = ("prompt", "question", "problem")


def words(text: str) -> list[str]:
    """Lowercased words, punctuation stripped (runs of letters and digits, any script)."""
    return _WORD.findall(text.lower())


def ngrams(ws: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]


def prompt_turns(rec: Any) -> list[str]:
    """The user turns of a row's prompt (an SFT or preference row; an item through ``as_prompt``)."""
    prompt = getattr(rec, "prompt", None)
    if not isinstance(prompt, list):
        as_prompt = getattr(rec, "as_prompt", None)
        prompt = as_prompt() if callable(as_prompt) else None
    return [m.content for m in prompt or () if m.role == "user" and m.content]


@dataclass(frozen=True)
class Overlap:
    set: str
    item: int
    overlap: float

    def to_dict(self) -> dict[str, Any]:
        return {"set": self.set, "item": self.item, "overlap": self.overlap}


class Decontaminator:
    """An n-gram index of held-out prompts (``held_out``: set name -> its prompts) that tells whether
    a prompt overlaps one of them (module docstring: ``n``, ``threshold``, ``min_words``)."""

    def __init__(
        self,
        held_out: Mapping[str, list[str]],
        n: int = N,
        threshold: float = THRESHOLD,
        min_words: int = MIN_WORDS,
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.n, self.threshold, self.min_words = n, threshold, min_words
        self.items: list[tuple[str, int, int]] = []  # (set, index in the set, words)
        self.index: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)  # gram -> (item, pos)
        self.short: dict[int, dict[tuple[str, ...], int]] = defaultdict(dict)  # length -> words -> item
        for name, prompts in held_out.items():
            for i, text in enumerate(prompts):
                ws = words(text)
                k = len(self.items)
                self.items.append((name, i, len(ws)))
                if len(ws) >= n:
                    for pos, gram in enumerate(ngrams(ws, n)):
                        self.index[gram].append((k, pos))
                elif len(ws) >= min_words:
                    self.short[len(ws)].setdefault(tuple(ws), k)
        self.index = dict(self.index)

    def __len__(self) -> int:
        return len(self.items)

    def check(self, turns: str | Iterable[str]) -> Overlap | None:
        """The held-out item a prompt overlaps most, when that overlap reaches the threshold."""
        best = self.overlaps(turns)
        return best if best is not None and best.overlap >= self.threshold else None

    def overlaps(self, turns: str | Iterable[str]) -> Overlap | None:
        """The held-out item with the largest overlap with the prompt (None: no shared n-gram)."""
        texts = [turns] if isinstance(turns, str) else list(turns)
        n = self.n
        total = 0  # the row's words
        row_cov: dict[int, set[tuple[int, int]]] = defaultdict(set)  # item -> covered (turn, pos)
        item_cov: dict[int, set[int]] = defaultdict(set)  # item -> covered positions of the item
        whole: dict[int, float] = {}
        for t, text in enumerate(texts):
            ws = words(text)
            total += len(ws)
            for pos, gram in enumerate(ngrams(ws, n)):
                for k, ipos in self.index.get(gram, ()):
                    row_cov[k].update((t, p) for p in range(pos, pos + n))
                    item_cov[k].update(range(ipos, ipos + n))
            for length, table in self.short.items():
                for gram in ngrams(ws, length):
                    k = table.get(gram)
                    if k is not None:
                        whole[k] = 1.0
        best: tuple[float, int] | None = None
        for k in row_cov.keys() | whole.keys():
            share = whole.get(k, 0.0)
            if k in row_cov:
                share = max(share, len(row_cov[k]) / total, len(item_cov[k]) / self.items[k][2])
            if best is None or share > best[0] or (share == best[0] and k < best[1]):
                best = (share, k)
        if best is None:
            return None
        name, i, _ = self.items[best[1]]
        return Overlap(name, i, round(best[0], 4))


@dataclass
class Decontaminate:
    """The decontamination stage (``Run.map``): rejects rows whose prompt overlaps a held-out item
    'contaminated', with ``meta["contaminated_by"]``; every other row is kept (a row without a user
    prompt with the reason 'no_prompt': nothing to check)."""

    decontaminator: Decontaminator
    name: str = "decontaminate"

    def __call__(self, records: list[Any]) -> list[Any]:
        for rec in records:
            turns = prompt_turns(rec)
            if not turns:
                rec.keep(self.name, "no_prompt")
                continue
            hit = self.decontaminator.check(turns)
            if hit is None:
                rec.keep(self.name)
            else:
                rec.meta["contaminated_by"] = hit.to_dict()
                rec.reject(self.name, "contaminated")
        return records


def read_held_out(paths: Iterable[str | Path] | Mapping[str, str | Path]) -> dict[str, list[str]]:
    """Held-out evaluation sets from JSONL files: set name (the file's stem, or the mapping's key) ->
    the prompts, one per line, from its "prompt", "question" or "problem" field (a "prompt" that is a
    list of chat messages gives its user turns). A line with none of them is an error (a silently
    skipped item would let its copies through)."""
    named = dict(paths) if isinstance(paths, Mapping) else {Path(p).stem: p for p in _unique(paths)}
    out: dict[str, list[str]] = {}
    for name, path in named.items():
        prompts = []
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                text = _prompt_text(row) if isinstance(row, dict) else None
                if text is None:
                    raise ValueError(
                        f"{path}:{line_no}: a held-out row needs a text field {' / '.join(PROMPT_FIELDS)}"
                    )
                prompts.append(text)
        out[name] = prompts
    return out


def _unique(paths: Iterable[str | Path]) -> list[str | Path]:
    paths = list(paths)
    stems = [Path(p).stem for p in paths]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise ValueError(f"held-out files share a name ({', '.join(dup)}): pass a mapping name -> path")
    return paths


def _prompt_text(row: dict[str, Any]) -> str | None:
    for key in PROMPT_FIELDS:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list):  # chat messages
            turns = [m.get("content", "") for m in value if isinstance(m, dict) and m.get("role") == "user"]
            if any(t.strip() for t in turns):
                return "\n".join(turns)
    return None


def contamination_report(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """What decontamination dropped: one dict per contaminated row (id, set, item, overlap)."""
    out = []
    for rec in rows:
        hit = rec.meta.get("contaminated_by")
        if hit and any(not v.kept and v.reason == "contaminated" for v in rec.verdicts):
            out.append({"id": rec.id, "set": hit["set"], "item": hit["item"], "overlap": hit["overlap"]})
    return out
