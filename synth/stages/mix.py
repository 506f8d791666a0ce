"""The data mix: rows of several capabilities brought to target proportions (Llama 3 section 4.2.2,
Table 7: "we carefully balance the proportion of each data source").

``MixSelect`` is a stage kind (``Run.map``) over rows that already carry ``scores["quality"]`` and
``scores["difficulty"]`` (the quality and difficulty stages): in ``prepare`` it counts the rows of each
capability (``provenance.capability``) in one streaming pass and decides how many each capability
keeps; then it keeps the best of each capability by quality x difficulty (a missing score counts 1.0;
ties by id) and rejects the rest with the reason ``over_mix_share``; a capability the proportions do not
name is rejected ``not_in_mix``.

How many rows: with ``total`` 0 (the default), the largest total whose shares are exactly the asked ones
given the rows there are (the scarcest capability, relative to its share, sets it); with a ``total``,
each capability's share of it, capped at what it has. A capability asked for that has no row at all
gets 0 and the others keep their shares relative to one another. ``synth.export.mix_card`` reports
what was asked and what was achieved.

Beyond the paper: the proportions are an input (``TABLE_7`` is Llama 3's SFT mix, the shipped example),
and every row left out says why, so the mix shows in the run's funnel.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

# Llama 3, Table 7 (SFT data, % of examples), mapped onto this project's capabilities:
# general English -> general, code -> code, multilingual -> multilingual, exam-like -> math,
# reasoning and tools -> tools, long context -> long_context.
TABLE_7: dict[str, float] = {
    "general": 52.66,
    "code": 14.89,
    "multilingual": 3.01,
    "math": 8.14,
    "tools": 21.19,
    "long_context": 0.11,
}

RANK_SCORES = ("quality", "difficulty")


def rank_of(scores: dict[str, Any], names: tuple[str, ...] = RANK_SCORES) -> float:
    """quality x difficulty (a score the row lacks counts 1.0)."""
    value = 1.0
    for name in names:
        s = scores.get(name)
        if isinstance(s, int | float) and math.isfinite(s):
            value *= float(s)
    return value


def plan_mix(available: dict[str, int], proportions: dict[str, float], total: int = 0) -> dict[str, int]:
    """Rows each capability keeps. ``proportions`` are normalised to sum to 1 over the capabilities
    that have rows; ``total`` 0: the largest total that meets them exactly with the rows
    ``available``; else that total, each share capped at what its capability has."""
    weights = {c: float(p) for c, p in proportions.items() if p > 0}
    norm = sum(weights.values())
    if norm <= 0:
        raise ValueError("proportions: at least one capability needs a share above 0")
    # a capability asked for but without rows cannot be met: the others keep their shares relative to
    # one another (the report shows the missing one's 0% against what was asked)
    present = {c: w for c, w in weights.items() if available.get(c, 0) > 0}
    if not present:
        return {c: 0 for c in weights}
    norm = sum(present.values())
    shares = {c: w / norm for c, w in present.items()}
    if total <= 0:
        total = int(min(available[c] / s for c, s in shares.items()))
    return {c: min(available.get(c, 0), int(round(shares.get(c, 0.0) * total))) for c in weights}


@dataclass
class MixSelect:
    proportions: dict[str, float]
    total: int = 0
    rank_scores: tuple[str, ...] = RANK_SCORES
    name: str = "mix"
    keep_ids: set[str] = field(default_factory=set, init=False)

    def prepare(self, run: Any, source: Any) -> None:
        by_cap: dict[str, list[tuple[float, str]]] = {}
        for key, _kind, _grp, data in run.store.iter_rows(source.stages, source.kept, latest=source.latest):
            row = json.loads(data)
            cap = (row.get("provenance") or {}).get("capability") or "unknown"
            by_cap.setdefault(cap, []).append((rank_of(row.get("scores") or {}, self.rank_scores), key))
        available = {c: len(v) for c, v in by_cap.items()}
        plan = plan_mix(available, self.proportions, self.total)
        self.keep_ids = set()
        for cap, n in plan.items():
            best = sorted(by_cap.get(cap, []), key=lambda t: (-t[0], t[1]))[:n]
            self.keep_ids.update(k for _, k in best)

    def __call__(self, records: list[Any]) -> list[Any]:
        for r in records:
            cap = (r.provenance.capability if r.provenance else None) or "unknown"
            if r.id in self.keep_ids:
                r.keep(self.name)
            elif cap not in self.proportions or self.proportions[cap] <= 0:
                r.reject(self.name, "not_in_mix")
            else:
                r.reject(self.name, "over_mix_share")
        return records
