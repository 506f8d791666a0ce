"""`synth run code`: code snippets -> problems -> K solutions -> ruff + unit tests in the sandbox ->
repair rounds -> passing solutions as SFT rows, failing-vs-passing preference rows, and two more SFT
branches built on them: backtranslated documentation and language translations checked by execution.

Reads top to bottom, one stage per step; each stage's rule lives in ``synth.stages.code``. The funnel
shows how many candidates passed in each round: ``execute_round0`` kept = passed first time,
``execute_roundN`` kept = passed after repair N, and ``solutions`` rejects the rest as never_passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sandboxes import Limits
from synth.engines import Engine
from synth.generators.base import GenerationConfig
from synth.pipeline import Run, kept
from synth.stages.code.backtranslate import Document, FaithfulnessJudge, Regenerate, source_record
from synth.stages.code.common import CAPABILITY, Sandbox
from synth.stages.code.execute import NOT_REPAIRABLE, Execute
from synth.stages.code.outcome import PreferencePairs, final_states, propose_pairs, solutions
from synth.stages.code.problems import WriteProblems, read_corpus
from synth.stages.code.repair import Repair
from synth.stages.code.solve import Solve
from synth.stages.code.translate import LANGUAGES, IOCases, RunTranslation, Translate
from synth.stages.code.unittests import WriteTests

DEFAULT_CORPUS = str(Path(__file__).resolve().parents[2] / "pipelines" / "data" / "code_corpus")


@dataclass(kw_only=True)
class CodeConfig(GenerationConfig):
    corpus: str = DEFAULT_CORPUS
    k: int = 2  # solutions sampled per problem
    problems_per_snippet: int = 2
    max_tokens: int = 384
    repair_rounds: int = 2
    languages: list[str] = field(default_factory=lambda: ["javascript", "php"])
    backend: str = "local"  # sandbox backend: local (bubblewrap) | docker
    unsafe_no_isolation: bool = False
    timeout_s: float = 10.0
    memory_mb: int = 512
    backtranslate_corpus: bool = True  # document the corpus files too, not only passing solutions
    bt_threshold: float = 7.0  # keep documentation whose backtranslation scores at least this (1-10)
    judge_max_tokens: int = 32

    def __post_init__(self) -> None:
        unknown = [lang for lang in self.languages if lang not in LANGUAGES]
        if unknown:
            raise ValueError(f"cannot translate to {', '.join(unknown)}; choose from {', '.join(LANGUAGES)}")
        if self.repair_rounds < 0 or self.k < 1 or self.problems_per_snippet < 1:
            raise ValueError("repair_rounds must be >= 0, k and problems_per_snippet >= 1")


def run_code(cfg: CodeConfig, engine: Engine | None = None) -> Run:
    """Run (or resume) the pipeline; ``engine`` replaces the configured one (tests, embedding)."""
    sandbox = Sandbox(
        backend=cfg.backend,
        unsafe_no_isolation=cfg.unsafe_no_isolation,
        limits=Limits(timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb),
    )
    sandbox.check()  # no isolation here: stop before any work, not with every program failing
    run = cfg.open_run()
    run.store.set_meta("outputs", {"sft": "collect_sft", "preference": "preference_pairs"})
    run.store.set_meta("capability", CAPABILITY)
    snippets = run.apply("snippets", read_corpus(cfg.corpus), lambda batch: batch)

    engine = cfg.cached_engine(run, engine)
    sampling = cfg.sampling()
    one = cfg.sampling(n=1)
    bs = cfg.batch_size

    # 1. problems inspired by snippets, 2. K solutions each, 3. a unit-test script per solution
    problems_sampling = cfg.sampling(n=cfg.problems_per_snippet)
    problems = run.map_batches(
        "write_problems", snippets, WriteProblems(engine, problems_sampling), batch_size=bs
    )
    candidates = run.map_batches("solve", kept(problems), Solve(engine, sampling), batch_size=bs)
    tested = run.map_batches("write_tests", kept(candidates), WriteTests(engine, one), batch_size=bs)

    # 4. ruff + sandbox; 5. failures go back with their feedback for up to N repair rounds
    executed = run.map_batches(
        "execute_round0", kept(tested), Execute(sandbox, "execute_round0", 0), batch_size=bs
    )
    loop = [executed]
    for r in range(1, cfg.repair_rounds + 1):
        failed = [c for c in executed if not c.kept and c.verdicts[-1].reason not in NOT_REPAIRABLE]
        repaired = run.map_batches(
            f"repair_round{r}", failed, Repair(engine, one, f"repair_round{r}", r), batch_size=bs
        )
        executed = run.map_batches(
            f"execute_round{r}", kept(repaired), Execute(sandbox, f"execute_round{r}", r), batch_size=bs
        )
        loop += [repaired, executed]

    # 6. passing solutions -> SFT; failing vs passing of one problem -> preference (checked in the sandbox)
    final = final_states(loop)
    solved = run.apply("solutions", final, solutions)
    run.map_batches("preference_pairs", propose_pairs(final), PreferencePairs(sandbox), batch_size=bs)
    passing = kept(solved)

    # 7. translation to other languages, kept when it reproduces the solution's recorded I/O cases
    translated = []
    if cfg.languages:
        cases = run.map_batches("io_cases", passing, IOCases(sandbox), batch_size=bs)
        for lang in cfg.languages:
            drafts = run.map_batches(
                f"translate_{lang}",
                kept(cases),
                Translate(engine, one, lang, f"translate_{lang}"),
                batch_size=bs,
            )
            translated += run.map_batches(
                f"run_{lang}", kept(drafts), RunTranslation(sandbox, f"run_{lang}"), batch_size=bs
            )

    # 8. backtranslation: document -> code from the docs alone -> faithfulness judge
    sources = [
        source_record(f"bt-{s.id}", s.meta["code"], s.meta["path"])
        for s in snippets
        if cfg.backtranslate_corpus
    ]
    sources += [source_record(f"bt-{s.id}", s.meta["code"], s.id) for s in passing]
    documented = run.map_batches("bt_document", sources, Document(engine, one), batch_size=bs)
    regenerated = run.map_batches("bt_regenerate", kept(documented), Regenerate(engine, one), batch_size=bs)
    judge = FaithfulnessJudge(engine, threshold=cfg.bt_threshold, max_tokens=cfg.judge_max_tokens)
    judged = run.map_batches("bt_judge", kept(regenerated), judge, batch_size=bs)

    # 9. every branch's kept rows, one SFT stage for export
    def collect(rows):
        out = [r.model_copy(deep=True) for r in rows]
        for r in out:
            r.keep("collect_sft")
        return out

    run.apply("collect_sft", [*passing, *kept(translated), *kept(judged)], collect)
    run.store.set_meta("outcomes", outcome_counts(solved))
    run.log("run_done")
    return run


def outcome_counts(solved) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in solved:
        key = r.meta.get("outcome", "never_passed")
        if key == "never_passed":
            key = f"never_passed ({r.meta.get('last_failure')})"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
