"""Math: the existing held-out math evaluation (``synth.stages.math.evaluate.evaluate_math``) as a check
of the suite.

Llama 3 evaluates math reasoning on GSM8K and MATH (section 5.2.2) by the final answer. The evaluator
asks for a step-by-step solution in the math recipe's format and grades the final answer with the
recipe's grader (math-verify, in a worker pool): greedy ``accuracy`` (the headline), and with ``k`` > 0
the sampled ``pass@1``, ``pass@k`` and ``maj@k``. Rows: ``pipelines/data/math/heldout.jsonl``
(``{"id", "problem", "answer"}``), never read by the math recipe (its seeds are ``problems.jsonl``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synth.engines.base import Engine
from synth.evaluate.common import Progress
from synth.stages.math.evaluate import evaluate_math as _evaluate_math
from synth.stages.math.items import MathProblem


def read_problems(path: str | Path, limit: int | None = None) -> list[MathProblem]:
    from synth.stages.math.problems import read_problems as read

    return list(read(path, limit=limit))


def evaluate_math(
    engine: Engine,
    rows: list[MathProblem],
    *,
    k: int = 0,
    max_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
    batch_size: int = 16,
    workers: int | None = 1,
    timeout: float = 5.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """``{"accuracy", "n", ...the evaluator's metrics..., "results"}``."""
    metrics = _evaluate_math(engine, rows, k, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                             seed=seed, batch_size=batch_size, workers=workers, timeout=timeout,
                             per_problem=True)  # fmt: skip
    if progress is not None:
        progress(len(rows))
    results = metrics.pop("per_problem")
    metrics.pop("problems")
    return {"accuracy": metrics.pop("greedy_accuracy"), "n": len(rows), **metrics, "results": results}
