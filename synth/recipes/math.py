"""Math and reasoning (Llama 3 section 4.3.3), as a recipe:

    problems (a file with gold answers, or CHAMP) -+-> K chain-of-thought solutions ----------+
       \\-> synthetic problems (seed + skill) ------+-> K code-interleaved solutions (sandbox) -+
    -> majority vote settles synthetic answers -> grading (math-verify) -> steps -> N rollouts
       per step (+ LLM step judge) -> step-verified SFT rows, step-label rows (TRL stepwise)
    correct vs incorrect -> preference rows;  incorrect + feedback -> correction -> SFT rows

What the paper does, in its words and numbers: it addresses the lack of prompts by sourcing math
contexts and building prompts from a taxonomy of mathematical skills; it augments the training data
with step-wise reasoning traces, generating solutions with Llama 3 and filtering them against the
correct answers (rejection sampling over K = 10-30 samples), and "filters training data where
intermediate reasoning steps were incorrect" with outcome and stepwise reward models and MCTS
(Math-Shepherd-style rollouts); it interleaves code and text reasoning, executing the Python and
feeding its output back; and it learns from feedback and mistakes, prompting the model to correct its
incorrect generations.

Here: problems come from a JSONL with gold answers (the shipped handmade set by default, or the
CHAMP set, ``--problems champ``) and from the model, which writes ``synthetic_per_seed`` problems per
seed from a skill of ``skills``; a synthetic problem's answer is the majority answer of its solutions
when at least ``min_agreement`` of them agree (OpenMathInstruct-2). Each problem gets ``k``
chain-of-thought and ``code_k`` code-interleaved solutions (the code runs in the sandbox,
``code_rounds`` times at most). Answers are graded with math-verify after normalisation
(``synth.stages.math.grading``; ``synth grade math`` grades any model's outputs the same way). Every
correct solution, and ``label_incorrect`` incorrect ones per problem, is split into steps and
continued ``rollouts`` times from each step (Math-Shepherd: hard labels by default, soft with
``step_label: soft``); a correct solution with a bad step is dropped from SFT ('bad_step'), and with
``step_judge`` an LLM step judge must agree with the rollout labels ('disagreement'). The defaults are
sized for a laptop and the embedded model (K = 4 + 2, N = 4 rollouts, 8 steps at most); Llama 3's own
numbers are K = 10-30, and Math-Shepherd used N = 8.

Beyond the paper: preference rows pair a correct, step-verified solution with an incorrect one of
the same problem; error-correction rows keep only corrections the grader finds right, and put the
mistake in the user turn so the loss falls on the correction; step-label rows are exported as a
third config (``step_labels``: prompt, completions, labels, soft_labels) for a process reward model;
the run records how many rollout prompt tokens a prefix cache saves (run meta ``prefix_sharing``,
printed with the outcomes). On the embedded 135M model the yield is near zero: the mechanics are the
same with a strong teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandboxes import Limits
from synth.config import option
from synth.pipeline import Run
from synth.prompts import load_prompt
from synth.recipe import Outputs, RecipeConfig, recipe
from synth.stages.execute import Sandbox
from synth.stages.math.grade import GradeStage, Vote
from synth.stages.math.grading import GraderPool
from synth.stages.math.outputs import Correct, CorrectionRows, MathPairs
from synth.stages.math.problems import CHAMP, WriteProblems, load_skills, read_problems
from synth.stages.math.solve import ContinueCode, RunCode, Solve, SolveWithCode
from synth.stages.math.steps import Rollouts, SplitSteps, StepLabels, VerifySteps, prefix_sharing, step_judge
from synth.store import Store

DATA = Path(__file__).resolve().parents[2] / "pipelines" / "data" / "math"
SHIPPED_PROBLEMS = str(DATA / "problems.jsonl")
SHIPPED_SKILLS = str(DATA / "skills.yaml")
SHIPPED_LICENSE = "apache-2.0 (written for synth)"


@dataclass(kw_only=True)
class MathConfig(RecipeConfig):
    problems: str = option(
        SHIPPED_PROBLEMS,
        "JSONL of problems {'id', 'problem', 'answer'}; 'champ': the CHAMP set (pip install champ-dataset).",
    )
    limit: int = option(0, "Use only the first N problems (0: all).", min=0)
    k: int = option(4, "Chain-of-thought solutions per problem (Llama 3 samples 10-30).", min=1)
    code_k: int = option(2, "Code-interleaved solutions per problem, run in the sandbox (0: none).", min=0)
    code_rounds: int = option(2, "Times a code solution's Python runs and the model reads its output.", min=1)
    max_tokens: int = option(320, "Max new tokens per solution (and per code round).", min=1)
    synthetic_per_seed: int = option(
        1, "Problems the model writes per seed problem from a skill of the taxonomy (0: none).", min=0
    )
    skills: str = option(SHIPPED_SKILLS, "YAML skill taxonomy (area: [skills]) synthetic problems practise.")
    min_agreement: float = option(
        0.5, "Keep a synthetic problem when this share of its solutions agree on the answer.", gt=0.0, max=1.0
    )
    rollouts: int = option(4, "Continuations from each step (Math-Shepherd: 8).", min=1)
    rollout_max_tokens: int = option(192, "Max new tokens per rollout.", min=1)
    max_steps: int = option(
        8, "Steps a solution is split into at most (the rest merge into the last).", min=1
    )
    step_label: str = option(
        "hard",
        "hard: a step is good when any rollout reaches the answer; soft: when the share that do "
        "reaches soft_threshold.",
        choices=("hard", "soft"),
    )
    soft_threshold: float = option(
        0.5, "Share of rollouts a step needs with step_label: soft.", gt=0.0, max=1.0
    )
    label_incorrect: int = option(
        1, "Incorrect solutions per problem whose steps are labelled too (step-label rows; 0: none).", min=0
    )
    step_judge: bool = option(
        False, "Also rate each step with an LLM judge; keep rows where it agrees with the rollouts."
    )
    judge_threshold: float = option(
        5.0, "A step the judge rates at least this (1-10) is correct.", min=1, max=10
    )
    judge_max_tokens: int = option(32, "Max tokens of the step judge's reply.", min=1)
    pairs_per_problem: int = option(1, "Correct-over-incorrect preference rows per problem.", min=0)
    corrections_per_problem: int = option(
        1, "Incorrect solutions per problem sent back with feedback to be corrected (0: none).", min=0
    )
    grade_timeout: float = option(5.0, "math-verify's limit per parse and comparison, seconds.", min=1.0)
    grade_workers: int = option(2, "Grading worker processes.", min=1, rows=False)
    backend: str = option(
        "local", "Sandbox backend: local (bubblewrap) or docker.", choices=("local", "docker")
    )
    unsafe_no_isolation: bool = option(
        False, "Run generated code without isolation (local backend; trusted hosts only)."
    )
    timeout_s: float = option(10.0, "Wall-clock limit of one program run in the sandbox, seconds.", min=0.1)
    memory_mb: int = option(512, "Memory limit of one program run in the sandbox, MiB.", min=16)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.engine == "vllm":  # rollouts share their solution's prefix: let vLLM reuse it
            self.engine_kwargs = {"enable_prefix_caching": True, **self.engine_kwargs}

    def sandbox(self) -> Sandbox:
        limits = Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        return Sandbox(backend=self.backend, unsafe_no_isolation=self.unsafe_no_isolation, limits=limits)

    def check(self) -> None:
        if self.code_k:
            self.sandbox().check()  # no isolation here: stop before any work, not at the first program
        if self.synthetic_per_seed:
            load_skills(self.skills)


@recipe("math", MathConfig)
def math(run: Run, cfg: MathConfig) -> Outputs:
    """Problems -> K solutions (CoT + code) -> vote -> grade -> step rollouts; + pairs, corrections."""
    llm = dict(engine=run.engine, round=cfg.round)
    bs = cfg.batch_size
    per_problem = bs * (cfg.k + cfg.code_k)
    run.store.set_meta("data_sources", data_sources(cfg))
    pool = GraderPool(workers=cfg.grade_workers, timeout=cfg.grade_timeout)
    try:
        # 1. problems with gold answers; synthetic ones written from seed problems and skills
        rows = read_problems(cfg.problems, skip_invalid=cfg.skip_invalid, on_bad=run.quarantine,
                             limit=cfg.limit or None)  # fmt: skip
        problems = run.source("problems", rows)
        every = problems
        if cfg.synthetic_per_seed:
            write = WriteProblems(
                sampling=cfg.sampling(n=cfg.synthetic_per_seed), skills=load_skills(cfg.skills), **llm
            )
            every = problems + run.map(write, problems, bs)

        # 2. K chain-of-thought solutions; code-interleaved ones, their Python run in the sandbox
        solved = run.map(Solve(sampling=cfg.sampling(), **llm), every, bs)
        if cfg.code_k:
            sandbox, stop = cfg.sandbox(), (load_prompt("math/solve_code").data["stop"],)
            code = run.map(SolveWithCode(sampling=cfg.sampling(n=cfg.code_k, stop=stop), **llm), every, bs)
            for r in range(cfg.code_rounds):
                code = run.map(RunCode(sandbox=sandbox, code_round=r), code, bs)
                code = run.map(
                    ContinueCode(sampling=cfg.sampling(n=1, stop=stop), code_round=r, **llm), code, bs
                )
            solved = solved + code

        # 3. synthetic answers by majority vote, then every solution graded against its answer
        voted = run.grouped(Vote(pool, cfg.min_agreement), solved, per_problem)
        graded = run.map(GradeStage(pool, cfg.grade_timeout), voted, per_problem)

        # 4. steps of correct (and some incorrect) solutions, N rollouts from each, labels
        steps = run.grouped(SplitSteps(cfg.max_steps, cfg.label_incorrect), graded.all, per_problem)
        rollout = cfg.sampling(n=cfg.rollouts, max_tokens=cfg.rollout_max_tokens)
        labelled = run.map(Rollouts(engine=run.engine, sampling=rollout, pool=pool, timeout=cfg.grade_timeout,
                                    round=cfg.round), steps, bs)  # fmt: skip
        judge_threshold = None
        if cfg.step_judge:
            labelled = run.map(step_judge(run.engine, cfg.judge_max_tokens), labelled, bs)
            judge_threshold = cfg.judge_threshold
        labels = (cfg.step_label, cfg.soft_threshold, judge_threshold)
        verified = run.grouped(VerifySteps(*labels), labelled, bs * cfg.max_steps)
        step_rows = run.grouped(StepLabels(*labels), labelled, bs * cfg.max_steps)

        # 5. preference rows: a verified solution over an incorrect one of the same problem
        pairs = run.grouped(MathPairs(cfg.pairs_per_problem), (graded.all + verified.all).last(), per_problem)

        # 6. learning from mistakes: incorrect solutions + feedback -> corrections the grader accepts
        sft = [verified]
        if cfg.corrections_per_problem:
            correct = Correct(sampling=cfg.sampling(n=1), per_problem=cfg.corrections_per_problem, **llm)
            fixes = run.grouped(correct, graded.rejected, per_problem)
            fixed = run.map(GradeStage(pool, cfg.grade_timeout, name="grade_corrections"), fixes, bs)
            sft.append(run.map(CorrectionRows(), fixed, bs))
    finally:
        pool.close()
    sharing = prefix_sharing(run.store, "rollouts", cfg.rollouts)
    run.store.set_meta("prefix_sharing", sharing)
    run.store.set_meta("outcomes", outcomes(run.store, sharing, cfg))
    return Outputs(prompts=problems, sft=sft, preference=[pairs], extra={"step_labels": [step_rows]})


def data_sources(cfg: MathConfig) -> list[dict[str, str]]:
    """The input data the run names in its data card, with licences."""
    if cfg.problems == CHAMP:
        problems = {
            "name": "problems",
            "path": "champ-dataset (CHAMP, 202 gradable problems)",
            "license": "MIT",
        }
    elif Path(cfg.problems).resolve() == Path(SHIPPED_PROBLEMS).resolve():
        problems = {"name": "problems", "path": Path(cfg.problems).name, "license": SHIPPED_LICENSE}
    else:
        problems = {
            "name": "problems",
            "path": Path(cfg.problems).name,
            "license": "the user's (not recorded)",
        }
    out = [problems]
    if cfg.synthetic_per_seed:
        shipped = Path(cfg.skills).resolve() == Path(SHIPPED_SKILLS).resolve()
        out.append({"name": "skill taxonomy", "path": Path(cfg.skills).name,
                    "license": SHIPPED_LICENSE if shipped else "the user's (not recorded)"})  # fmt: skip
    return out


def outcomes(store: Store, sharing: dict, cfg: MathConfig) -> dict[str, int | float | str]:
    """The run in a line: what was made at each step (one count query per stage)."""

    def kept(stage: str) -> int:
        rows = store.query("SELECT count(*) FROM records WHERE stage = ? AND kept", [stage])
        return int(rows[0][0]) if rows else 0

    def total(stage: str) -> int:
        rows = store.query("SELECT count(*) FROM records WHERE stage = ?", [stage])
        return int(rows[0][0]) if rows else 0

    graded = total("grade")
    out: dict[str, int | float | str] = {
        "problems": kept("problems"),
        "synthetic problems": kept("write_problems"),
        "solutions graded": graded,
        "correct": kept("grade"),
        "yield (correct share)": round(kept("grade") / graded, 4) if graded else 0.0,
        "step-verified sft": kept("verify_steps"),
        "step-label rows": kept("step_labels"),
        "preference rows": kept("preference_pairs"),
        "corrections": kept("error_correction") if cfg.corrections_per_problem else 0,
        "rollout prompt tokens": sharing["rollout_prompt_tokens"],
        "shared prefix tokens": sharing["shared_prefix_tokens"],
    }
    return out
