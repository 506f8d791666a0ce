"""Selection stages: best of K per prompt, top-quantile filtering, and preference pairs."""

from __future__ import annotations

import math
from collections import defaultdict

from synth.records import STRENGTHS, Message, PreferenceRecord, Response, SFTRecord


def group_by_prompt(records: list[SFTRecord]) -> dict[str, list[SFTRecord]]:
    groups: dict[str, list[SFTRecord]] = defaultdict(list)
    for r in records:
        groups[r.meta.get("prompt_id", r.id)].append(r)
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
    records: list[SFTRecord], score: str, fraction: float = 0.25, stage: str = "top_quartile"
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


def preference_pairs(records: list[SFTRecord], score: str) -> list[PreferenceRecord]:
    """Best vs worst response of each prompt, when their scores differ and their texts do."""
    pairs, gaps = [], []
    for prompt_id, group in group_by_prompt(records).items():
        scored = sorted((r for r in group if score in r.scores and r.response), key=_rank_key(score))
        if len(scored) < 2:
            continue
        best, worst = scored[0], scored[-1]
        gap = best.scores[score] - worst.scores[score]
        if gap <= 0 or best.response.strip() == worst.response.strip():
            continue
        gaps.append(gap)
        pairs.append(
            PreferenceRecord(
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
        )
    for pair, strength in zip(pairs, strengths_by_gap(gaps), strict=True):
        pair.strength = strength
    return pairs
