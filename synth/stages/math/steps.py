"""Step verification by rollouts (Math-Shepherd), with an optional LLM step judge for consensus.

A solution is split into steps (``split_steps``); from the end of each step but the last, the model
continues the solution ``N`` times (``Rollouts``: the solution so far is an assistant prefix the
engine continues). A step is good when any continuation reaches the gold answer (the hard label) or
by the share that do (the soft label, against ``soft_threshold``). The last step's label is the
solution's own correctness. Llama 3 drops from SFT "training data where intermediate reasoning steps
were incorrect": ``VerifySteps`` keeps a correct solution as an SFT row only when every step is good
('bad_step' otherwise). With a step judge (``StepJudge``, a ``JudgeStage`` over steps), a step's
judge verdict (score >= the threshold) must agree with its rollout label, or the row is dropped
('disagreement'): consensus filtering. ``StepLabels`` writes every labelled solution (right or wrong
answer) as a row of TRL's stepwise-supervision format.

The rule for steps: lines starting "Step N:" start a step, and the lines after one (a code block and
its output, a wrapped sentence) belong to it; without such markers, each non-blank line is a step. A
line that only states the final answer joins the step before it. Fenced blocks are never split.
Beyond ``max_steps`` the remaining steps are merged into the last.

Prefix sharing: a solution's rollout requests are prefixes of one another (step 1's prompt is the
start of step 2's), and each is sampled N times. vLLM reuses the KV blocks of a shared prefix
(``enable_prefix_caching``, on for this recipe); the hf engine recomputes each prompt for each sample.
``prefix_sharing`` counts what a prefix cache saves: the prompt tokens of every rollout sample, less
the tokens of each solution's longest prefix (the only ones a cache must compute).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from synth.engines.base import Engine, Request, SamplingParams
from synth.prompts import load_prompt
from synth.records import Message, Record, SFTRecord, StepLabelRecord
from synth.stages.judge import JudgeStage
from synth.stages.math.grading import GraderPool, grade_all
from synth.stages.math.items import MathSolution, StepPrefix
from synth.stages.select import group_by_prompt
from synth.store import Store

_STEP_START = re.compile(r"^\s*(?:[*#>-]+\s*)?step\s*\d+\s*[:.)]", re.IGNORECASE)
_ANSWER_LINE = re.compile(
    r"^\s*(?:\*\*)?(?:(?:so|thus|therefore|hence)?,?\s*(?:the\s+)?(?:final\s+)?answer\b|#{4}|\\boxed|\$\\boxed|A\s*:)",
    re.IGNORECASE,
)
TEMPLATES = {"cot": "math/solve", "code": "math/solve_code", "correction": "math/solve"}


def _units(text: str) -> list[str]:
    """Non-blank lines, with each fenced block (``` ... ```) as one unit."""
    units: list[str] = []
    fence: list[str] | None = None
    for line in text.splitlines():
        if fence is not None:
            fence.append(line)
            if line.strip().startswith("```"):
                units.append("\n".join(fence))
                fence = None
        elif line.strip().startswith("```"):
            fence = [line]
        elif line.strip():
            units.append(line.rstrip())
    if fence is not None:
        units.append("\n".join(fence))
    return units


def split_steps(text: str, max_steps: int = 8) -> list[str]:
    """The solution's steps, in order (see the module docstring for the rule)."""
    units = _units(text)
    marked = any(_STEP_START.match(u) for u in units)
    steps: list[str] = []
    for u in units:
        starts = _STEP_START.match(u) if marked else not u.startswith("```")
        if steps and (not starts or _ANSWER_LINE.match(u)):
            steps[-1] += "\n" + u
        else:
            steps.append(u)
    if len(steps) > max_steps:
        steps = steps[: max_steps - 1] + ["\n".join(steps[max_steps - 1 :])]
    return steps


def step_prefixes(sol: MathSolution, max_steps: int) -> list[StepPrefix]:
    """One ``StepPrefix`` per step of a graded solution (ids ``{solution}-t{i}``)."""
    steps = split_steps(sol.text, max_steps)
    return [
        StepPrefix(
            id=f"{sol.id}-t{i}",
            solution_id=sol.id,
            problem_id=sol.problem_id,
            problem=sol.problem,
            answer=sol.answer or "",
            mode=sol.mode,
            steps=steps,
            index=i,
            terminal=i == len(steps) - 1,
            solution_correct=bool(sol.correct),
            provenance=sol.provenance,
            meta={"sample": sol.sample, "text": sol.text, "extracted": sol.extracted},
        )
        for i in range(len(steps))
    ]


@dataclass
class SplitSteps:
    """Graded solutions (whole problems, ``Run.grouped``) -> the steps of the ones picked for
    verification: every correct solution, and up to ``incorrect_per_problem`` incorrect ones that
    state an answer (their step labels are negative examples for a process reward model)."""

    max_steps: int = 8
    incorrect_per_problem: int = 1
    name: str = "split_steps"

    def __call__(self, solutions: list[MathSolution]) -> list[Record]:
        out: list[Record] = []
        for group in group_by_prompt(solutions).values():  # type: ignore[arg-type]
            wrong = [s for s in group if s.correct is False and s.extracted and s.answer]
            picked = [s for s in group if s.correct] + wrong[: self.incorrect_per_problem]
            for sol in sorted(picked, key=lambda s: s.id):
                for step in step_prefixes(sol, self.max_steps):
                    step.keep(self.name)
                    out.append(step)
        return out


# -- rollouts -----------------------------------------------------------------------------------------
def rollout_messages(step: StepPrefix) -> list[dict[str, str]]:
    """The solve prompt of the solution's mode, then the solution up to the end of this step as the
    assistant turn the engine continues."""
    prompt = load_prompt(TEMPLATES.get(step.mode, "math/solve"))
    return [*prompt.messages(problem=step.problem), {"role": "assistant", "content": step.prefix}]


@dataclass(kw_only=True)
class Rollouts:
    """Steps -> the same steps with ``outcomes``: ``sampling.n`` continuations from each
    non-terminal step, graded against the gold answer (score ``step_soft``: the share right)."""

    engine: Engine
    sampling: SamplingParams
    pool: GraderPool | None = None
    timeout: float = 5.0
    round: int = 0
    name: str = "rollouts"

    def __call__(self, steps: list[StepPrefix]) -> list[Record]:
        asked = [s for s in steps if not s.terminal]
        requests = [Request.chat(rollout_messages(s)) for s in asked]
        replies = self.engine.generate(requests, self.sampling) if asked else []
        grades = grade_all(
            [(c.text, s.answer) for s, comps in zip(asked, replies, strict=True) for c in comps],
            self.pool,
            self.timeout,
        )
        at = 0
        for s, comps in zip(asked, replies, strict=True):
            mine = grades[at : at + len(comps)]
            at += len(comps)
            s.outcomes = [g.correct for g in mine]
            s.rollout_answers = [g.extracted for g in mine]
            s.prompt_tokens = comps[0].prompt_tokens if comps else 0
            s.scores["step_soft"] = sum(s.outcomes) / len(s.outcomes) if s.outcomes else 0.0
            s.meta["rollout_finish"] = [c.finish_reason for c in comps]
        for s in steps:
            if s.terminal:
                s.scores["step_soft"] = 1.0 if s.solution_correct else 0.0
            s.keep(self.name)
        return list(steps)


def judge_variables(step: StepPrefix) -> dict[str, str]:
    """The step judge's variables: the problem, the steps before, and the step."""
    previous = "\n".join(step.steps[: step.index]) or "(none)"
    return {"problem": step.problem, "previous": previous, "step": step.steps[step.index]}


def step_judge(engine: Engine, max_tokens: int = 32) -> JudgeStage:
    """The LLM step judge (1-10 per step, score ``step_judge``; no threshold here: the verdicts
    compare it with the rollout label)."""
    return JudgeStage("step_judge", engine, load_prompt("math/step_judge"), judge_variables,
                      score="step_judge", max_tokens=max_tokens)  # fmt: skip


# -- labels -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Labels:
    """A solution's step labels: ``good`` (hard or soft, as asked), ``soft``, and where the judge
    disagrees (when there is a judge)."""

    good: list[bool]
    soft: list[float]
    judge: list[bool] | None

    @property
    def first_bad(self) -> int | None:
        return next((i for i, ok in enumerate(self.good) if not ok), None)

    @property
    def agree(self) -> bool:
        return self.judge is None or self.judge == self.good


def label_steps(
    steps: list[StepPrefix],
    mode: str = "hard",
    soft_threshold: float = 0.5,
    judge_threshold: float | None = None,
) -> Labels:
    """Labels of one solution's steps (in order): hard = any rollout right, soft = the share right
    against ``soft_threshold``; the terminal step's label is the solution's correctness."""
    good, soft = [], []
    for s in sorted(steps, key=lambda s: s.index):
        share = (1.0 if s.solution_correct else 0.0) if s.terminal else s.scores.get("step_soft", 0.0)
        soft.append(round(share, 4))
        if s.terminal:
            good.append(s.solution_correct)
        elif mode == "soft":
            good.append(share >= soft_threshold)
        else:
            good.append(any(s.outcomes))
    judge = None
    if judge_threshold is not None:
        judge = [
            s.scores.get("step_judge", 0.0) >= judge_threshold for s in sorted(steps, key=lambda s: s.index)
        ]
    return Labels(good, soft, judge)


@dataclass
class VerifySteps:
    """Steps (whole solutions, ``Run.grouped``) -> an SFT row per correct solution, kept when every
    step is good (and, with a judge, the judge agrees on every step)."""

    mode: str = "hard"
    soft_threshold: float = 0.5
    judge_threshold: float | None = None
    name: str = "verify_steps"

    def __call__(self, steps: list[StepPrefix]) -> list[Record]:
        out: list[Record] = []
        for group in group_by_prompt(steps).values():  # type: ignore[arg-type]
            first = min(group, key=lambda s: s.index)
            if not first.solution_correct:
                continue  # labelled for the step-label rows only
            labels = label_steps(group, self.mode, self.soft_threshold, self.judge_threshold)
            row = SFTRecord(
                id=first.solution_id,
                messages=[Message(role="user", content=first.problem),
                          Message(role="assistant", content=first.meta["text"].strip())],
                provenance=first.provenance,
                scores={"step_min_soft": min(labels.soft)},
                meta={"prompt_id": first.problem_id, "mode": first.mode, "sample": first.meta.get("sample"),
                      "answer": first.answer, "extracted": first.meta.get("extracted"), "labels": labels.good,
                      "soft_labels": labels.soft, "judge_labels": labels.judge,
                      "first_bad_step": labels.first_bad},
            )  # fmt: skip
            if labels.first_bad is not None:
                row.reject(self.name, "bad_step")
            elif not labels.agree:
                row.reject(self.name, "disagreement")
            else:
                row.keep(self.name)
            out.append(row)
        return out


@dataclass
class StepLabels:
    """Steps (whole solutions, ``Run.grouped``) -> one stepwise-supervision row per solution (ids
    ``{solution}-steps``); with a judge, rows where it disagrees are rejected 'disagreement'."""

    mode: str = "hard"
    soft_threshold: float = 0.5
    judge_threshold: float | None = None
    name: str = "step_labels"

    def __call__(self, steps: list[StepPrefix]) -> list[Record]:
        out: list[Record] = []
        for group in group_by_prompt(steps).values():  # type: ignore[arg-type]
            ordered = sorted(group, key=lambda s: s.index)
            labels = label_steps(ordered, self.mode, self.soft_threshold, self.judge_threshold)
            first = ordered[0]
            row = StepLabelRecord(
                id=f"{first.solution_id}-steps",
                prompt=first.problem,
                completions=first.steps,
                labels=labels.good,
                soft_labels=labels.soft,
                provenance=first.provenance,
                meta={"prompt_id": first.problem_id, "solution_id": first.solution_id, "mode": first.mode,
                      "solution_correct": first.solution_correct, "first_bad_step": labels.first_bad,
                      "judge_labels": labels.judge},
            )  # fmt: skip
            if labels.agree:
                row.keep(self.name)
            else:
                row.reject(self.name, "disagreement")
            out.append(row)
        return out


# -- what a prefix cache saves ------------------------------------------------------------------------
def prefix_sharing(store: Store, stage: str, n: int) -> dict[str, Any]:
    """Prompt tokens of the rollout samples of ``stage`` (``n`` per request), and how many of them a
    prefix cache need not compute: a solution's rollout prompts are prefixes of its longest one."""
    rows = store.query(
        "SELECT count(*), coalesce(sum(t), 0), coalesce(sum(longest), 0) FROM (SELECT "
        "json_extract_string(data, '$.solution_id') AS sol, count(*) AS c, "
        "sum(TRY_CAST(json_extract(data, '$.prompt_tokens') AS BIGINT)) AS t, "
        "max(TRY_CAST(json_extract(data, '$.prompt_tokens') AS BIGINT)) AS longest "
        "FROM records WHERE stage = ? AND NOT TRY_CAST(json_extract(data, '$.terminal') AS BOOLEAN) "
        "GROUP BY sol)",
        [stage],
    )
    solutions, per_request, longest = rows[0] if rows else (0, 0, 0)
    total = int(per_request) * n
    shared = total - int(longest)
    return {
        "solutions": int(solutions),
        "samples_per_step": n,
        "rollout_prompt_tokens": total,
        "prefix_tokens_to_compute": int(longest),
        "shared_prefix_tokens": shared,
        "shared_fraction": round(shared / total, 4) if total else 0.0,
    }


def prefix_savings(steps: list[StepPrefix], n: int) -> dict[str, int]:
    """``prefix_sharing`` for steps in memory (rolled out, ``prompt_tokens`` set): the prompt tokens of
    their ``n`` rollout samples each, and the tokens of each solution's longest rollout prompt."""
    longest: dict[str, int] = {}
    total = 0
    for s in steps:
        if s.terminal:
            continue
        total += s.prompt_tokens * n
        longest[s.solution_id] = max(longest.get(s.solution_id, 0), s.prompt_tokens)
    return {"rollout_prompt_tokens": total, "prefix_tokens_to_compute": sum(longest.values())}


# -- the verifier as a function (benchmarks, evaluation) ----------------------------------------------
@dataclass
class StepVerifier:
    """Label given solutions' steps outside a run: the same prefixes, rollouts and labels as the
    recipe (``benchmarks/step_verifier.py`` checks it against known truth)."""

    engine: Engine
    sampling: SamplingParams
    pool: GraderPool | None = None
    mode: str = "hard"
    soft_threshold: float = 0.5
    timeout: float = 5.0
    rollout_prompt_tokens: int = 0  # over every ``label`` call: see ``prefix_savings``
    prefix_tokens_to_compute: int = 0

    def label(self, items: list[tuple[str, list[str], str, bool]]) -> list[Labels]:
        """For each (problem, steps, gold answer, whether the final answer is right): its step
        labels."""
        prefixes: list[StepPrefix] = []
        for k, (problem, steps, gold, right) in enumerate(items):
            for i in range(len(steps)):
                prefixes.append(StepPrefix(id=f"v{k}-t{i}", solution_id=f"v{k}", problem_id=f"p{k}",
                                           problem=problem, answer=gold, steps=steps, index=i,
                                           terminal=i == len(steps) - 1, solution_correct=right))  # fmt: skip
        Rollouts(engine=self.engine, sampling=self.sampling, pool=self.pool, timeout=self.timeout)(prefixes)
        saved = prefix_savings(prefixes, self.sampling.n)
        self.rollout_prompt_tokens += saved["rollout_prompt_tokens"]
        self.prefix_tokens_to_compute += saved["prefix_tokens_to_compute"]
        by_solution: dict[str, list[StepPrefix]] = {}
        for p in prefixes:
            by_solution.setdefault(p.solution_id, []).append(p)
        return [label_steps(by_solution[f"v{k}"], self.mode, self.soft_threshold) for k in range(len(items))]
