"""Accuracy of a model on held-out problems, graded as the recipe grades (``synth eval math``).

``evaluate_math(engine_or_model, rows, k)`` asks the model for one greedy solution per problem
(``greedy``: accuracy) and ``k`` sampled ones (``pass@k``: any right; ``maj@k``: the most common
answer, equivalent answers counted together, is right; ``pass@1``: the mean share right), in the
solve prompt's format (``synth/prompts/math/solve.yaml``), and grades them with the grading pool. It
takes an engine (one already loaded) or a model path / hub id (an hf engine is built), and rows as
``{"id", "problem", "answer"}`` dicts or ``MathProblem``s.

``evaluate_to(out_dir, model, data)`` is the evaluation as one step of a training round: it reads
the problems of a JSONL file (by default the shipped held-out set, ``HELDOUT``), evaluates the model and
writes ``OUT/metrics.json``, the file ``synth round`` shows in ``ROUND.md`` for each step that leaves
one (``synth round`` does not call it yet).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from synth.engines.base import Engine, Request, SamplingParams
from synth.prompts import load_prompt
from synth.stages.math.grading import GraderPool, majority
from synth.stages.math.items import MathProblem

HELDOUT = Path(__file__).resolve().parents[3] / "pipelines" / "data" / "math" / "heldout.jsonl"


def _problems(rows: Iterable[dict[str, Any] | MathProblem]) -> list[MathProblem]:
    from synth.stages.math.problems import problem_from_row

    out = []
    for i, row in enumerate(rows):
        out.append(row if isinstance(row, MathProblem) else problem_from_row(row, f"row {i + 1}"))
    return out


def evaluate_math(
    engine_or_model: Engine | str | None,
    rows: Iterable[dict[str, Any] | MathProblem],
    k: int = 4,
    *,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_tokens: int = 384,
    seed: int = 0,
    greedy: bool = True,
    batch_size: int = 16,
    workers: int | None = None,
    timeout: float = 5.0,
    template: str = "math/solve",
    engine: str = "hf",
    engine_kwargs: dict[str, Any] | None = None,
    per_problem: bool = False,
) -> dict[str, Any]:
    """Greedy accuracy, pass@1, pass@k and maj@k of a model on ``rows`` (``k`` = 0: greedy only)."""
    started = time.monotonic()
    if engine_or_model is None or isinstance(engine_or_model, str):
        from synth.engines import get_engine

        llm = get_engine(engine, engine_or_model, **(engine_kwargs or {}))
    else:
        llm = engine_or_model
    problems = _problems(rows)
    if not problems:
        raise ValueError("no problems to evaluate")
    prompt = load_prompt(template)
    requests = [Request.chat(prompt.messages(problem=p.problem)) for p in problems]

    def sample(params: SamplingParams) -> list[list[str]]:
        texts: list[list[str]] = []
        for start in range(0, len(requests), batch_size):
            texts += [
                [c.text for c in comps]
                for comps in llm.generate(requests[start : start + batch_size], params)
            ]
        return texts

    greedy_texts = sample(SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens)) if greedy else []
    sampled = (
        sample(SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed))
        if k
        else []
    )
    with GraderPool(workers=workers, timeout=timeout) as pool:
        greedy_grades = pool.grade(
            [(t[0], p.answer or "") for t, p in zip(greedy_texts, problems, strict=False)]
        )
        flat = [(t, p.answer or "") for texts, p in zip(sampled, problems, strict=False) for t in texts]
        sample_grades = pool.grade(flat)
        votes = []
        for i in range(len(sampled)):
            mine = sample_grades[i * k : (i + 1) * k]
            answer, count = majority([g.extracted for g in mine], pool.compare)
            votes.append((answer, count))
        vote_right = pool.compare(
            [(p.answer or "", a) for p, (a, _) in zip(problems, votes, strict=False) if a]
        )
    n = len(problems)
    result: dict[str, Any] = {
        "model": getattr(llm, "model", str(engine_or_model)),
        "problems": n,
        "k": k,
    }
    if greedy:
        result["greedy_accuracy"] = round(sum(g.correct for g in greedy_grades) / n, 4)
        result["greedy_no_answer"] = round(sum(g.reason == "no_answer" for g in greedy_grades) / n, 4)
    if k:
        right = [[g.correct for g in sample_grades[i * k : (i + 1) * k]] for i in range(n)]
        it = iter(vote_right)
        maj = [bool(next(it)) if a else False for a, _ in votes]
        result["pass@1"] = round(sum(sum(r) / k for r in right) / n, 4)
        result[f"pass@{k}"] = round(sum(any(r) for r in right) / n, 4)
        result[f"maj@{k}"] = round(sum(maj) / n, 4)
        result["sampled_no_answer"] = round(sum(g.reason == "no_answer" for g in sample_grades) / (n * k), 4)
    if per_problem:
        rows_out = []
        for i, p in enumerate(problems):
            row: dict[str, Any] = {"id": p.id, "answer": p.answer}
            if greedy:
                g = greedy_grades[i]
                row.update(greedy_correct=g.correct, greedy_extracted=g.extracted)
            if k:
                row.update(
                    correct=sum(g.correct for g in sample_grades[i * k : (i + 1) * k]), majority=votes[i][0]
                )
            rows_out.append(row)
        result["per_problem"] = rows_out
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def evaluate_to(
    out_dir: str | Path,
    engine_or_model: Engine | str | None,
    data: str | Path = HELDOUT,
    k: int = 4,
    *,
    limit: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """``evaluate_math`` on the problems of ``data`` (the first ``limit``; 0: all), its metrics
    written to ``out_dir/metrics.json`` (with ``data`` and per-problem results) and returned without
    the per-problem rows: one call per round evaluates each round's model the same way."""
    from synth.stages.math.problems import read_problems

    rows = list(read_problems(data, limit=limit or None))
    result = evaluate_math(engine_or_model, rows, k, per_problem=True, **options)
    result["data"] = str(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    result.pop("per_problem")
    return result
