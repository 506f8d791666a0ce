"""Factuality: the existing held-out knowledge-probe evaluation (``synth.stages.factuality.evaluate``) as
a check of the suite.

Llama 3 aligns the model to "know what it knows" (section 4.3.6) and judges the result by how often it
refuses rather than hallucinates. Each held-out probe (``pipelines/data/factuality/probes.jsonl``:
capitals and continents of countries outside the factuality recipe's corpus, so every probe is held
out) is asked plainly and with a forced best guess; reported are ``correct_rate`` (the headline),
``refusal_rate``, ``over_refusal_rate`` (refusals of what the model knows), ``wrong_answer_rate`` and
``knows_rate``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from synth.engines.base import Engine
from synth.evaluate.common import Progress
from synth.stages.factuality.evaluate import Probe, evaluate, rates
from synth.stages.factuality.evaluate import read_probes as _read_probes

HEADLINE = ("correct_rate", "refusal_rate", "over_refusal_rate", "wrong_answer_rate")


def read_probes(path: str | Path, limit: int | None = None) -> list[Probe]:
    return list(_read_probes(path, limit=limit))


def evaluate_factuality(
    engine: Engine,
    rows: list[Probe],
    *,
    max_tokens: int = 64,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """``{"correct_rate", "refusal_rate", ..., "n", "results"}``."""
    if not rows:
        raise ValueError("no probes to evaluate")
    results = []
    for start in range(0, len(rows), batch_size):  # batch by batch: the progress bar moves
        batch = rows[start : start + batch_size]
        _, part = evaluate(engine, batch, max_tokens=max_tokens, batch_size=batch_size)
        results += part
        if progress is not None:
            progress(len(batch))
    metrics = rates(results)
    metrics.pop("probes")
    out = {k: metrics.pop(k) for k in HEADLINE}
    return {**out, "n": len(rows), **metrics,
            "results": [{**asdict(r), "outcome": r.outcome} for r in results]}  # fmt: skip
