"""The selection stage kinds: best of K per prompt, top-fraction filtering, and preference pairs.

Each works on a whole stage without holding it: ``BestOfK`` and ``PreferencePairs`` run as grouped
passes (``Run.grouped``: a prompt's K candidates arrive together), and what needs the whole stage is a
query (``TopFraction``'s quantile, in DuckDB) or one streaming pass (the pairs' gap quartiles), done in
``prepare`` before the first batch. The pure functions below are the rules; the classes are the stages.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from synth.records import STRENGTHS, Message, PreferenceRecord, Response, SFTRecord


def group_by_prompt(records: list[SFTRecord]) -> dict[str, list[SFTRecord]]:
    groups: dict[str, list[SFTRecord]] = defaultdict(list)
    for r in records:
        groups[r.group_key].append(r)
    return dict(groups)


def _rank_key(score: str):
    # higher score first; the id breaks ties so a rerun picks the same row
    return lambda r: (-r.scores.get(score, -math.inf), r.id)


def best_of_k(records: list[SFTRecord], score: str, stage: str = "best_of_k") -> list[SFTRecord]:
    """Keep the highest-scoring response of each prompt; reject the others as 'not_best'."""
    for group in group_by_prompt(records).values():
        ranked = sorted(group, key=_rank_key(score))
        ranked[0].keep(stage)
        for r in ranked[1:]:
            r.reject(stage, "not_best")
    return records


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def top_quantile(
    records: list[SFTRecord], score: str, fraction: float = 0.25, stage: str = "top_fraction"
) -> list[SFTRecord]:
    """Keep records whose score reaches the top ``fraction`` (ties at the threshold stay)."""
    scored = [r.scores[score] for r in records if score in r.scores]
    threshold = quantile(scored, 1.0 - fraction) if scored else math.inf
    for r in records:
        s = r.scores.get(score)
        if s is None:
            r.reject(stage, f"no_{score}_score")
        elif s < threshold:
            r.reject(stage, "below_top_quantile")
            r.meta[f"{stage}_threshold"] = threshold
        else:
            r.keep(stage)
    return records


def strengths_by_gap(gaps: list[float]) -> list[str]:
    """Llama 2's four strengths from score gaps, by the gap's quartile among the run's pairs.

    Relative, like a human annotator's scale: judges and reward models differ in range (a small
    judge's expected scores span a point or two), so an absolute gap cut would call everything
    "marginally better". The widest quarter of gaps is "significantly better", the narrowest
    quarter "marginally better".
    """
    order = sorted(range(len(gaps)), key=lambda i: -gaps[i])
    out = [""] * len(gaps)
    for rank, i in enumerate(order):
        out[i] = STRENGTHS[min(3, rank * 4 // len(gaps))]
    return out


def best_and_worst(group: list[SFTRecord], score: str) -> tuple[SFTRecord, SFTRecord, float] | None:
    """A prompt's best and worst scored responses and their gap, when they make a pair."""
    scored = sorted((r for r in group if score in r.scores and r.response), key=_rank_key(score))
    if len(scored) < 2:
        return None
    best, worst = scored[0], scored[-1]
    gap = best.scores[score] - worst.scores[score]
    if gap <= 0 or best.response.strip() == worst.response.strip():
        return None
    return best, worst, gap


def make_pair(prompt_id: str, best: SFTRecord, worst: SFTRecord, gap: float, score: str) -> PreferenceRecord:
    return PreferenceRecord(
        id=f"{prompt_id}-pair",
        prompt=[Message.model_validate(m.model_dump()) for m in best.prompt],
        responses=[
            Response(content=best.response, label="chosen", score=best.scores[score]),
            Response(content=worst.response, label="rejected", score=worst.scores[score]),
        ],
        provenance=best.provenance,
        scores={f"{score}_gap": gap},
        meta={"prompt_id": prompt_id, "chosen_id": best.id, "rejected_id": worst.id},
    )


def preference_pairs(records: list[SFTRecord], score: str) -> list[PreferenceRecord]:
    """Best vs worst response of each prompt, when their scores differ and their texts do."""
    pairs, gaps = [], []
    for prompt_id, group in group_by_prompt(records).items():
        found = best_and_worst(group, score)
        if found:
            pairs.append(make_pair(prompt_id, *found, score))
            gaps.append(found[2])
    for pair, strength in zip(pairs, strengths_by_gap(gaps), strict=True):
        pair.strength = strength
    return pairs


def gap_bands(gaps: list[float]) -> list[float]:
    """The three gap values that separate the quartiles of ``strengths_by_gap``, for labelling one
    pair at a time: a gap takes the label of the widest band whose smallest gap it reaches."""
    if not gaps:
        return []
    ordered = sorted(gaps, reverse=True)
    n = len(ordered)
    # rank r is in band min(3, 4r // n): band b starts at the first rank with 4r >= b n
    starts = [-(-b * n // 4) for b in (1, 2, 3)]
    return [ordered[s - 1] if 0 < s <= n else -math.inf for s in starts]


def strength_of(gap: float, bands: list[float]) -> str:
    """Label of one gap given ``gap_bands``: equal to ``strengths_by_gap`` whenever gaps are distinct."""
    return STRENGTHS[sum(1 for b in bands if gap < b)]


# -- the stages ---------------------------------------------------------------------------------
@dataclass
class BestOfK:
    """Keep each prompt's highest-scoring response (run with ``Run.grouped``)."""

    score: str
    name: str = "best_of_k"

    def __call__(self, records: list[SFTRecord]) -> list[SFTRecord]:
        return best_of_k(records, self.score, self.name)


@dataclass
class TopFraction:
    """Keep rows whose score reaches the top ``fraction`` of the input (Llama 3 keeps the top quartile
    by reward-model score). The threshold is one DuckDB quantile over the input rows."""

    score: str
    fraction: float = 0.25
    name: str = "top_fraction"
    threshold: float = field(default=math.inf, init=False)

    def prepare(self, run: Any, source: Any) -> None:
        value = run.store.quantile(source.stages, source.kept, self.score, 1.0 - self.fraction, source.latest)
        self.threshold = math.inf if value is None else value

    def __call__(self, records: list[SFTRecord]) -> list[SFTRecord]:
        for r in records:
            s = r.scores.get(self.score)
            if s is None:
                r.reject(self.name, f"no_{self.score}_score")
            elif s < self.threshold:
                r.reject(self.name, "below_top_quantile")
                r.meta[f"{self.name}_threshold"] = self.threshold
            else:
                r.keep(self.name)
        return records


@dataclass
class PreferencePairs:
    """Best vs worst response of each prompt, with Llama 2's four strengths by the quartile of the
    pair's score gap among the run's pairs (run with ``Run.grouped``; the gaps come from one streaming
    pass in ``prepare``)."""

    score: str
    name: str = "preference_pairs"
    bands: list[float] = field(default_factory=list, init=False)

    def prepare(self, run: Any, source: Any) -> None:
        gaps = []
        stream = run.store.iter_records(source.stages, source.kept, order="group", latest=source.latest)
        for _, group in itertools.groupby(stream, key=lambda r: r.group_key):
            found = best_and_worst(list(group), self.score)
            if found:
                gaps.append(found[2])
        self.bands = gap_bands(gaps)

    def __call__(self, records: list[SFTRecord]) -> list[PreferenceRecord]:
        out = []
        for prompt_id, group in group_by_prompt(records).items():
            found = best_and_worst(group, self.score)
            if found:
                pair = make_pair(prompt_id, *found, self.score)
                pair.strength = strength_of(found[2], self.bands)  # type: ignore[assignment]
                pair.keep(self.name)
                out.append(pair)
        return out
