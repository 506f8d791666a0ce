"""Rejection-sampled native prompts (Llama 3 section 4.3.2): K samples per prompt at a temperature
drawn per prompt.

Llama 3 draws the temperature from 0.2-1 for diverse generations in its early rounds (high
temperatures make multilingual responses creative but prone to unnatural code-switching) and uses 0.6
in its final round. ``SampleAtDrawnTemperature`` draws each prompt's temperature uniformly from
``[low, high]`` by a hash of the run's seed and the prompt id (a rerun draws the same), rounded to
``step`` so that prompts of one batch share few engine calls, and samples K responses at it
(``meta["temperature"]``; the provenance's sampling says it too). ``low == high`` is a constant.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from synth.records import Provenance, Record, stable_id
from synth.stages.generate import Respond


def drawn_temperature(seed: int | None, prompt_id: str, low: float, high: float, step: float = 0.1) -> float:
    """A temperature in [low, high], the same for the same seed and prompt."""
    u = int(stable_id("temperature", seed, prompt_id), 16) / 16**16
    t = low + (high - low) * u
    if step > 0:
        t = low + round((t - low) / step) * step
    return round(min(max(t, low), high), 4)


@dataclass(kw_only=True)
class SampleAtDrawnTemperature(Respond):
    """``Respond`` at a temperature drawn per prompt in ``[low, high]``."""

    name: str = "sample"
    low: float = 0.2
    high: float = 1.0
    step: float = 0.1

    def temperature(self, item: Any) -> float:
        return drawn_temperature(self.sampling.seed, item.id, self.low, self.high, self.step)

    def __call__(self, items: list[Any]) -> list[Record]:
        groups: dict[float, list[Any]] = defaultdict(list)
        for item in items:
            groups[self.temperature(item)].append(item)
        out: list[Record] = []
        for t in sorted(groups):
            # a copy per temperature: batches may run in threads at once, the stage itself never changes
            at_t = replace(self, sampling=replace(self.sampling, temperature=t))
            for rec in Respond.__call__(at_t, groups[t]):
                rec.meta["temperature"] = t
                out.append(rec)
        order = {item.id: i for i, item in enumerate(items)}  # rows in the order of their prompts

        def prompt_of(r: Record) -> str:
            return r.meta.get("prompt_id") or getattr(r, "input_id", r.id)

        return sorted(out, key=lambda r: order.get(prompt_of(r), 0))

    def provenance(self, item: Any) -> Provenance:
        p = super().provenance(item)
        p.language = item.meta.get("language")
        return p
