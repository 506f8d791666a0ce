"""What the held-out checks share: reading a check's JSONL rows (validated at the boundary, as every
input of the project is), asking the model greedily in batches, and the shares they report."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synth.engines.base import Engine, Request, SamplingParams
from synth.io import iter_records

Progress = Callable[[int], None]  # advanced by the number of items just finished


def read_rows(path: str | Path, model: type[BaseModel], limit: int | None = None) -> Iterator[Any]:
    """The rows of a JSONL file as ``model`` instances (ids unique; a bad row is an ``InputError``
    naming file, line and field), the first ``limit`` only when given."""
    return islice(iter_records(path, model.model_validate, unique_ids=True), limit)


def greedy_replies(
    engine: Engine,
    requests: Sequence[Request],
    *,
    max_tokens: int,
    batch_size: int = 16,
    stop: Sequence[str] = (),
    progress: Progress | None = None,
) -> list[Any]:
    """One greedy completion per request (``Completion``s, in order), ``batch_size`` requests per
    engine call; ``progress`` is told after each batch."""
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, stop=tuple(stop))
    out: list[Any] = []
    for start in range(0, len(requests), batch_size):
        batch = list(requests[start : start + batch_size])
        out += [comps[0] for comps in engine.generate(batch, params)]
        if progress is not None:
            progress(len(batch))
    return out


def share(count: int | float, of: int) -> float:
    """``count / of`` rounded to 4 places (0.0 for nothing)."""
    return round(count / of, 4) if of else 0.0
