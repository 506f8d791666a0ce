"""Code (Llama 3 section 4.3.1, "synthetic data generation" for code), as a recipe:

    corpus snippets -> problems -> K solutions -> unit tests -> ruff + sandbox -> repair rounds
        -> passing solutions as SFT rows, failing vs passing as preference rows
        -> translation to JavaScript / PHP, kept when it reproduces the solution's I/O cases
    corpus snippets + passing solutions -> documentation -> code from the docs -> faithfulness judge

The paper's three approaches, in its words and numbers (over 2.7M synthetic SFT examples in all):
execution feedback (about one million coding dialogues: random code snippets inspire problem
descriptions, the model solves them, a parser and linter (static analysis) and model-written unit tests
run in a container check them, and a failing solution goes back with the problem, the faulty code and
the parser / linter / test feedback; about 20% of the solutions were initially wrong and corrected
themselves), programming-language translation (Python to less common languages, checked by parsing,
compiling and executing) and backtranslation (about 1.2M dialogues: document or explain code, write the
code back from that alone, and keep what the model, given the original as reference, rates faithful).

Here the defaults are sized for a laptop and the embedded model (K = 2 solutions of 2 problems per
file, 2 repair rounds, a faithfulness threshold of 7 on 1-10). Beyond the paper: a failing and a
passing solution of one problem become a preference row once the sandbox confirms the failing code
fails the passing tests; translations are checked against the Python solution's recorded input/output cases,
not only run; and the test harness rejects tests that assert nothing. The funnel reads as a report:
``execute_round0`` kept = passed first time, ``execute_roundN`` kept = passed after repair N, and
``solutions`` rejects the rest as never_passed (run meta ``outcomes`` counts each outcome).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandboxes import Limits
from synth.config import ConfigError, option
from synth.pipeline import Run
from synth.prompts import load_prompt
from synth.recipe import Outputs, RecipeConfig, recipe
from synth.stages.code.backtranslate import (
    SCORE,
    Document,
    FaithfulnessJudge,
    Regenerate,
    faithfulness_variables,
)
from synth.stages.code.execute import Execute
from synth.stages.code.outcome import PreferencePairs, Solutions, outcome_counts
from synth.stages.code.problems import WriteProblems, read_corpus
from synth.stages.code.repair import Repair
from synth.stages.code.solve import Solve
from synth.stages.code.translate import LANGUAGES, IOCases, RunTranslation, Translate
from synth.stages.code.unittests import WriteTests
from synth.stages.execute import Sandbox

DEFAULT_CORPUS = str(Path(__file__).resolve().parents[2] / "pipelines" / "data" / "code_corpus")


@dataclass(kw_only=True)
class CodeConfig(RecipeConfig):
    corpus: str = option(
        DEFAULT_CORPUS, "Folder of .py files that inspire problems; default: the shipped corpus."
    )
    k: int = option(2, "Solutions sampled per problem.", min=1)
    problems_per_snippet: int = option(2, "Problems written per corpus file.", min=1)
    max_tokens: int = option(384, "Max new tokens per model call.", min=1)
    repair_rounds: int = option(2, "Rounds of feedback (lint, traceback, failing assert) and repair.", min=0)
    languages: list[str] = option(
        default_factory=lambda: ["javascript", "php"],
        help=f"Translation targets ({', '.join(LANGUAGES)}); empty for none.",
    )
    backend: str = option(
        "local", "Sandbox backend: local (bubblewrap) or docker.", choices=("local", "docker")
    )
    unsafe_no_isolation: bool = option(
        False, "Run generated code without isolation (local backend; trusted hosts only)."
    )
    timeout_s: float = option(10.0, "Wall-clock limit of one program run in the sandbox, seconds.", min=0.1)
    memory_mb: int = option(512, "Memory limit of one program run in the sandbox, MiB.", min=16)
    backtranslate_corpus: bool = option(True, "Document the corpus files too, not only passing solutions.")
    bt_threshold: float = option(
        7.0, "Keep documentation whose backtranslation scores at least this (1-10).", min=1.0, max=10.0
    )
    judge_max_tokens: int = option(32, "Max tokens of the faithfulness judge's reply.", min=1)

    def sandbox(self) -> Sandbox:
        limits = Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        return Sandbox(backend=self.backend, unsafe_no_isolation=self.unsafe_no_isolation, limits=limits)

    def check(self) -> None:
        self.sandbox().check()  # no isolation here: stop before any work, not with every program failing

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [lang for lang in self.languages if lang not in LANGUAGES]
        if unknown:
            raise ConfigError(
                f"languages: cannot translate to {', '.join(unknown)}; choose from {', '.join(LANGUAGES)}"
            )


@recipe("code", CodeConfig)
def code(run: Run, cfg: CodeConfig) -> Outputs:
    """Snippets -> problems -> K solutions -> tests -> sandbox -> repair; + translation, backtranslation."""
    sandbox = cfg.sandbox()  # checked before the run opened (CodeConfig.check)
    llm = dict(engine=run.engine, round=cfg.round)  # round: the post-training round, in every row
    one = cfg.sampling(n=1)
    bs = cfg.batch_size

    # 1. corpus snippets inspire problems, 2. K solutions each, 3. a unit-test script per solution
    snippets = run.source("snippets", read_corpus(cfg.corpus, round=cfg.round))
    problems = run.map(WriteProblems(sampling=cfg.sampling(n=cfg.problems_per_snippet), **llm), snippets, bs)
    candidates = run.map(Solve(sampling=cfg.sampling(), **llm), problems, bs)
    tested = run.map(WriteTests(sampling=one, **llm), candidates, bs)

    # 4. ruff + the tests in the sandbox; 5. failures go back with their feedback, up to N rounds
    executed = run.map(Execute(sandbox=sandbox, repair_round=0), tested, bs)
    loop = executed.all
    for n in range(1, cfg.repair_rounds + 1):
        repaired = run.map(Repair(sampling=one, repair_round=n, **llm), executed.rejected, bs)
        executed = run.map(Execute(sandbox=sandbox, repair_round=n), repaired, bs)
        loop = loop + repaired.all + executed.all
    final = loop.last()  # each candidate's last row: passed in some round, or its last failure

    # 6. passing solutions -> SFT rows; failing vs passing of one problem -> preference rows (confirmed)
    solved = run.grouped(Solutions(), final, batch_size=bs * cfg.k)
    pairs = run.grouped(PreferencePairs(sandbox=sandbox), final, batch_size=bs * cfg.k)
    run.store.set_meta("outcomes", outcome_counts(run.store, solved.stages[0]))

    # 7. translation to other languages, kept when it reproduces the solution's recorded I/O cases
    translated = []
    if cfg.languages:
        cases = run.map(IOCases(sandbox=sandbox), solved, bs)
        for lang in cfg.languages:
            drafts = run.map(Translate(language=lang, sampling=one, **llm), cases, bs)
            translated.append(run.map(RunTranslation(language=lang, sandbox=sandbox), drafts, bs))

    # 8. backtranslation: document -> code from the docs alone -> faithfulness judge
    sources = snippets + solved if cfg.backtranslate_corpus else solved
    documented = run.map(Document(sampling=one, **llm), sources, bs)
    regenerated = run.map(Regenerate(sampling=one, **llm), documented, bs)
    rubric = load_prompt("code/faithfulness")
    judge = FaithfulnessJudge("bt_judge", run.engine, rubric, faithfulness_variables, score=SCORE,
                              threshold=cfg.bt_threshold, max_tokens=cfg.judge_max_tokens)  # fmt: skip
    judged = run.map(judge, regenerated, bs)

    return Outputs(prompts=problems, sft=[solved, *translated, judged], preference=[pairs])
