"""Quality scoring (Llama 3 section 4.2.3, "Quality scoring"): the reward model's top quartile OR an
LLM judge's maximum rubric score, the union kept.

The paper: "For an RM-based score, we consider data that is in the top quartile of RM scores as high
quality. For a Llama-based score, we prompt Llama 3 checkpoint to rate each sample on a three-point
scale for general English data (accuracy, instruction following, and tone/presentation) and a
two-point scale for coding data (bug identification and user intention), and consider samples that
obtain the maximum score as high quality. [...] we select examples that are marked as high quality by
the RM or the Llama-based filter." The two signals disagree often; their union recalls best.

``RubricJudge`` is the Llama-based signal: the judge machinery of ``synth.stages.judge`` (``judge``:
a greedy reply, scored by the G-Eval expectation over the whole labels 1..10 where the engine offers
``choice_logprobs``, else the number written) with one rubric per capability
(``quality/rubric_general``: accuracy, instruction following, tone/presentation;
``quality/rubric_code``: bug identification, user intention; any other capability falls back to the
general rubric). It writes ``scores["rubric"]`` on the judge's 1-10 scale, where 10 is the rubric's
maximum on every criterion (the paper's three- and two-point scales folded into the scale every judge
here uses, so one expectation reader serves them all). A reply without a score keeps the row (reason
'rubric_unparsed', no score): the reward model may still call it high quality.

"Maximum" is ``score >= max_score`` (default ``RUBRIC_MAX_SCORE`` = 9.5): a written score is an
integer, so 9.5 admits exactly 10; an expectation over 1..10 never reaches 10 exactly (any mass left
on 9 pulls it below), and >= 9.5 is the expectation that rounds to 10, i.e. a judge that puts most
of its probability on the maximum.

``QualitySelect`` is the union. In ``prepare`` one DuckDB query over the input (grouped by
``provenance.capability``) gives each capability's RM quartile cutoff (the 0.75 quantile, ``1 -
fraction``) and its RM percentile grid (101 quantiles); ``__call__`` keeps a row when its RM score
reaches its capability's cutoff ('rm_top_quartile') or its rubric score is a maximum ('judge_max'),
or both ('both', in ``meta["quality_by"]``), and rejects it 'low_quality' otherwise. Either score may
be missing (no reward model trained yet: judge only; no judge: RM only); a row with neither is
rejected 'unscored', never dropped silently.

``scores["quality"]`` ranks rows in [0, 1]: the larger of the row's RM percentile within its
capability (interpolated on the grid; the cutoff is exactly 1 - fraction) and ``rubric / 10``,
over whichever of the two the row has. The max mirrors the union: a row is as good as the stronger of
its two signals, so every row kept by either one ranks high. Beyond the paper, which only selects: the
percentile (``meta["quality_rm_percentile"]``) and the capability's cutoff
(``meta["quality_rm_cutoff"]``) are kept on each row for reports.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from synth.engines.base import Engine, Request
from synth.prompts import Prompt, load_prompt
from synth.stages.judge import judge, question_answer

RUBRIC_MAX_SCORE = 9.5  # a judge's "maximum" on its 1-10 scale (see the module docstring)
GRID = tuple(i / 100 for i in range(101))  # the percentile grid of each capability's RM scores


def default_rubrics() -> dict[str, Prompt]:
    """The paper's two rubrics: coding data, and general English data (every other capability)."""
    return {"general": load_prompt("quality/rubric_general"), "code": load_prompt("quality/rubric_code")}


def capability_of(rec: Any) -> str:
    """A row's capability (``provenance.capability``), "" when it has no provenance."""
    prov = getattr(rec, "provenance", None)
    return (prov.capability if prov is not None else None) or ""


@dataclass
class RubricJudge:
    """The Llama-based quality signal: one rubric judge per capability (``rubrics``; capabilities
    without one use ``rubrics["general"]``), writing ``scores[score]`` (1-10) and the judge's reply,
    written number, rationale, method and rubric name into ``meta["rubric_*"]``.

    Rows without a response are rejected 'no_response'; a reply without a score keeps the row with
    the reason 'rubric_unparsed' and no score. No threshold here: ``QualitySelect`` decides.
    """

    concurrent: ClassVar[bool] = True  # no state across batches, only engine calls
    engine: Engine
    name: str = "rubric"
    score: str = "rubric"
    rubrics: dict[str, Prompt] = field(default_factory=default_rubrics)
    variables: Callable[[Any], dict[str, Any]] = question_answer
    max_tokens: int = 64
    use_logprobs: bool = True  # when the engine offers choice_logprobs

    def __post_init__(self) -> None:
        if "general" not in self.rubrics:
            raise ValueError("rubrics need a 'general' rubric (the fallback of every other capability)")

    def rubric(self, rec: Any) -> Prompt:
        return self.rubrics.get(capability_of(rec)) or self.rubrics["general"]

    def __call__(self, records: list[Any]) -> list[Any]:
        groups: dict[str, list[Any]] = {}
        for rec in records:
            if not getattr(rec, "response", None):
                rec.reject(self.name, "no_response")
                continue
            groups.setdefault(self.rubric(rec).name, []).append(rec)
        for group in groups.values():
            prompt = self.rubric(group[0])
            requests = [Request.chat(prompt.messages(**self.variables(r)), id=r.id) for r in group]
            verdicts = judge(self.engine, requests, self.max_tokens, self.use_logprobs)
            for rec, j in zip(group, verdicts, strict=True):
                rec.meta["rubric"] = prompt.name
                rec.meta["rubric_reply"] = j.reply
                rec.meta["rubric_score_method"] = j.method
                rec.meta["rubric_text_score"] = j.text_score
                rec.meta["rubric_rationale"] = j.rationale
                if j.score is None:
                    rec.keep(self.name, "rubric_unparsed")
                    continue
                rec.scores[self.score] = j.score
                rec.keep(self.name)
        return records


# -- the store query ----------------------------------------------------------------------------
def capability_quantiles(
    store: Any,
    stages: Sequence[str],
    kept: bool | None,
    score: str,
    qs: Sequence[float],
    latest: bool = False,
) -> dict[str, list[float]]:
    """Capability -> the ``qs`` quantiles (linear, as ``Store.quantile``) of ``scores[score]`` over
    the rows of ``stages`` (kept, rejected or both; ``latest``: one row per id, its last stage), in
    one aggregate query grouped by ``json_extract(data, '$.provenance.capability')`` ("" for rows
    without provenance). Capabilities where no row has the score are absent."""
    rows, args = store.selection(list(stages), kept, latest)  # the rows, as every store read selects them
    sql = (
        "SELECT cap, quantile_cont(v, ?::DOUBLE[]) FROM ("
        "SELECT coalesce(json_extract_string(data, '$.provenance.capability'), '') AS cap, "
        f"TRY_CAST(json_extract(data, ?) AS DOUBLE) AS v FROM ({rows})"
        ") WHERE v IS NOT NULL AND isfinite(v) GROUP BY cap"
    )
    result = store.query(sql, [list(qs), f'$.scores."{score}"', *args])
    return {cap: [float(x) for x in values] for cap, values in result}


def percentile(value: float, grid: Sequence[float]) -> float:
    """Where ``value`` falls among a capability's scores, in [0, 1], read off its quantile grid
    (``grid[i]`` = the ``i / (len(grid) - 1)`` quantile) by linear interpolation: ``value >=
    grid[i]`` gives at least ``i / (len(grid) - 1)``, below it less."""
    steps = len(grid) - 1
    if value >= grid[-1]:
        return 1.0
    if value < grid[0]:
        return 0.0
    i = bisect.bisect_right(grid, value) - 1  # grid[i] <= value < grid[i + 1]
    return (i + (value - grid[i]) / (grid[i + 1] - grid[i])) / steps


@dataclass
class QualitySelect:
    """The union of Llama 3's two quality signals (run with ``Run.map`` after the reward model and
    ``RubricJudge``): keep rows in their capability's RM top ``fraction`` or with a maximum rubric
    score; reject the rest 'low_quality', and rows with neither score 'unscored'.

    Writes ``scores[quality]`` (in [0, 1]: max of RM percentile and rubric / 10, see the module
    docstring) and ``meta["quality_by"]`` ("rm_top_quartile", "judge_max" or "both") on kept rows.
    """

    rm_score: str = "rm"
    rubric_score: str = "rubric"
    fraction: float = 0.25  # Llama 3: the top quartile of RM scores
    max_score: float = RUBRIC_MAX_SCORE
    name: str = "quality"
    quality: str = "quality"
    cutoffs: dict[str, float] = field(default_factory=dict, init=False)
    grids: dict[str, list[float]] = field(default_factory=dict, init=False)
    prepared: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")

    def prepare(self, run: Any, source: Any) -> None:
        """Each capability's RM cutoff and percentile grid, one query over the whole input."""
        cut = 1.0 - self.fraction
        qs = sorted({*GRID, cut})
        found = capability_quantiles(
            run.store, source.stages, source.kept, self.rm_score, qs, getattr(source, "latest", False)
        )
        self.cutoffs = {cap: values[qs.index(cut)] for cap, values in found.items()}
        self.grids = {cap: [values[qs.index(q)] for q in GRID] for cap, values in found.items()}
        self.prepared = True

    def __call__(self, records: list[Any]) -> list[Any]:
        if not self.prepared:
            raise RuntimeError(
                f"{self.name}: prepare(run, source) computes the RM cutoffs; run it with Run.map"
            )
        for rec in records:
            rm = _finite(rec.scores.get(self.rm_score))
            rubric = _finite(rec.scores.get(self.rubric_score))
            cap = capability_of(rec)
            if rm is not None and cap not in self.cutoffs:  # scored after prepare: not in the input
                raise RuntimeError(f"{self.name}: row {rec.id} has an RM score but its input did not")
            if rm is None and rubric is None:
                rec.reject(self.name, "unscored")
                continue
            parts, by = [], []
            if rm is not None:
                cutoff = self.cutoffs[cap]
                pct = percentile(rm, self.grids[cap])
                if rm >= cutoff:
                    by.append("rm_top_quartile")
                    pct = max(pct, 1.0 - self.fraction)
                rec.meta["quality_rm_cutoff"] = cutoff
                rec.meta["quality_rm_percentile"] = round(pct, 4)
                parts.append(pct)
            if rubric is not None:
                if rubric >= self.max_score:
                    by.append("judge_max")
                parts.append(min(1.0, max(0.0, rubric / 10.0)))
            rec.scores[self.quality] = round(max(parts), 4)
            if by:
                rec.meta["quality_by"] = "both" if len(by) == 2 else by[0]
                rec.keep(self.name)
            else:
                rec.reject(self.name, "low_quality")
        return records


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
