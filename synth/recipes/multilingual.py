"""Multilingual SFT data (Llama 3 section 4.3.2), as a recipe: the three synthetic parts of its mix.

    translated:  problems (English, gold answers) -> translated into each language -> problem_language
                 -> K native solutions -> grade (math grader, gold unchanged) -> solution_language -> SFT
    native:      seed prompts -> prompt_language -> K samples, temperature drawn per prompt in [0.2, 1]
                 -> response_language -> judge (or reward model) -> best of K -> SFT; best vs worst -> pairs
    parallel:    sentence pairs -> translate, both directions -> translation_language
                 -> back-translate -> round-trip chrF >= threshold -> SFT

Llama 3's multilingual SFT mix is 2.4% human annotations, 44.2% data from other NLP tasks, 18.8%
rejection-sampled data and 34.6% translated reasoning data; this recipe builds the three synthetic
parts for the paper's seven languages (German, French, Italian, Portuguese, Hindi, Spanish, Thai):

- **Translated reasoning.** The paper avoids machine-translated data except for quantitative
  reasoning, whose simple language translates with few issues. Here only the problems are
  translated (the math recipe's problem files, or the SFT rows of any export whose answer ends in
  ``\\boxed{}`` or ``#### ...``, that answer as the gold; the gold answer carried over unchanged; a
  translation whose numbers differ from the source's is dropped, 'numbers_changed'), and the model
  answers in the target language, K times: a row is kept when the math grader
  (``synth.stages.math``) still finds its final answer correct and its language is the problem's.
- **Rejection-sampled native prompts.** K samples per prompt at a temperature drawn per prompt from
  ``temperature_min``-``temperature_max`` (the paper's 0.2-1 of its early rounds; set both to 0.6 for
  its final round). Before selection, the paper's multilingual checks: a response not in the prompt's
  language ('wrong_language'), or switching language midway ('language_switch'), is rejected. The
  judge (or, with ``reward_model``, the reward model) picks the best of K.
- **Other NLP tasks.** From parallel sentences (the user's, or the small shipped set), translation
  prompts in both directions, asked in the target language; the model's translation is kept when its
  back-translation scores a round-trip chrF (sacrebleu) of at least ``chrf_threshold``. The paper
  converts parallel text (and other NLP datasets) to dialogue as it is; here the response is the
  model's, checked against the source by round trip (the human reference's chrF is recorded).

Every text is identified by ``synth.stages.language`` (lingua by default; fastText's lid.176 with
``lid_backend: fasttext``; ``both``: the two must agree), which abstains below ``lid_min_chars``
letters or ``lid_min_confidence``.
Every row records its language (``provenance.language``, exported with it); ``synth stats`` shows the
funnel per language and the data card the language mix. Beyond the paper: the paper also checks that
a romanized Hindi prompt is not answered in Devanagari, which a language detector cannot tell (both are
Hindi); not done here. On the embedded 135M model, which writes almost only English, the yield in the
target languages is near zero: the mechanics are the same with a multilingual teacher.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

from synth.config import ConfigError, option
from synth.io import InputFileError, read_seeds
from synth.pipeline import Run
from synth.prompts import load_prompt
from synth.recipe import Outputs, RecipeConfig, recipe
from synth.records import Provenance
from synth.stages.judge import JudgeStage, question_answer
from synth.stages.language import (
    BACKENDS,
    CANDIDATES,
    LANGUAGE_META,
    TARGETS,
    LanguageID,
    LanguageStage,
    check_codes,
    language_funnel,
)
from synth.stages.math.grade import GradeStage
from synth.stages.math.grading import GraderPool, extract_answer, normalize
from synth.stages.math.items import MathProblem
from synth.stages.math.problems import read_problems
from synth.stages.multilingual.items import CAPABILITY
from synth.stages.multilingual.native import SampleAtDrawnTemperature
from synth.stages.multilingual.parallel import RoundTrip, read_parallel
from synth.stages.multilingual.reasoning import SolutionRows, SolveInLanguage
from synth.stages.multilingual.translate import (
    BackTranslate,
    TranslatePairs,
    TranslateProblems,
    missing_examples,
)
from synth.stages.reward import RewardModel, RewardStage
from synth.stages.select import BestOfK, PreferencePairs
from synth.store import Store

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "pipelines" / "data" / "multilingual"
SHIPPED_PROBLEMS = str(ROOT / "pipelines" / "data" / "math" / "problems.jsonl")
SHIPPED_SEEDS = str(DATA / "seeds.jsonl")
SHIPPED_PARALLEL = str(DATA / "parallel.jsonl")
PARTS = ("translated", "native", "parallel")
SHIPPED_LICENSE = "Apache-2.0 (written by hand for this project)"


@dataclass(kw_only=True)
class MultilingualConfig(RecipeConfig):
    parts: list[str] = option(
        help="Which parts to build: translated (reasoning), native (rejection-sampled prompts), parallel.",
        default_factory=lambda: list(PARTS),
    )
    languages: list[str] = option(
        help="Target languages, ISO 639-1 codes (Llama 3: de, fr, it, pt, hi, es, th).",
        default_factory=lambda: list(TARGETS),
    )
    problems: str = option(
        SHIPPED_PROBLEMS,
        "JSONL of English problems with gold answers (the math recipe's), 'champ', or a folder written "
        "by `synth export` (its SFT rows whose answer ends in \\boxed{} or '#### ...': that is the gold).",
    )
    problems_limit: int = option(0, "Translate only the first N problems (0: all).", min=0)
    seeds: str = option(
        SHIPPED_SEEDS,
        "JSONL of native prompts; a row may declare its language: {'meta': {'language': 'de'}}.",
    )
    seeds_limit: int = option(0, "Use only the first N native prompts (0: all).", min=0)
    parallel: str = option(
        SHIPPED_PARALLEL,
        "JSONL of sentence pairs {'id', 'source_language', 'source', 'target_language', 'target'}.",
    )
    parallel_limit: int = option(0, "Use only the first N sentence pairs (0: all).", min=0)
    temperature_min: float = option(0.2, "Native prompts: lowest drawn temperature (Llama 3: 0.2).", min=0.0)
    temperature_max: float = option(1.0, "Native prompts: highest drawn temperature (Llama 3: 1).", min=0.0)
    reward_model: str | None = option(
        None,
        "Reward model folder (`synth train rm`) that picks the best native response; default: the judge.",
    )
    judge_max_tokens: int = option(64, "Max tokens of the judge's reply.", min=1)
    chrf_threshold: float = option(
        50.0,
        "Keep a translation whose round-trip chrF against its source reaches this (0-100).",
        min=0,
        max=100,
    )
    lid_backend: str = option(
        "lingua",
        "Language identification: lingua, fasttext (lid.176), or both (both must name the language).",
        choices=BACKENDS,
    )
    lid_languages: list[str] = option(
        help="Languages lingua tells apart (the targets are always among them).",
        default_factory=lambda: list(CANDIDATES),
    )
    lid_min_chars: int = option(20, "Fewer letters than this: too short to identify (rejected).", min=1)
    lid_min_confidence: float = option(
        0.3, "Lower language confidence than this: not identified (rejected).", min=0.0, max=1.0
    )
    grade_timeout: float = option(5.0, "math-verify's limit per parse and comparison, seconds.", min=1.0)
    grade_workers: int = option(1, "Grading worker processes.", min=1, rows=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown or not self.parts:
            raise ConfigError(f"parts must be some of {', '.join(PARTS)}, got {self.parts}")
        if not self.languages:
            raise ConfigError("languages must name at least one language")
        if self.temperature_min > self.temperature_max:
            raise ConfigError(
                f"temperature_min ({self.temperature_min}) must not exceed "
                f"temperature_max ({self.temperature_max})"
            )
        try:
            check_codes([*self.languages, *self.lid_languages])
        except ValueError as e:
            raise ConfigError(f"languages: {e}") from None
        for part, prompt in (("translated", "multilingual/solve"), ("translated", "multilingual/translate")):
            missing = (
                missing_examples(load_prompt(prompt).data, list(self.languages)) if part in self.parts else []
            )
            if missing:
                raise ConfigError(
                    f"no few-shot example for {', '.join(missing)} in synth/prompts/{prompt}.yaml: add one"
                )

    def lid(self) -> LanguageID:
        candidates = tuple(dict.fromkeys([*self.lid_languages, *self.languages, "en"]))
        return LanguageID(self.lid_backend, candidates, self.lid_min_chars, self.lid_min_confidence)

    def check(self) -> None:
        if self.reward_model is not None and "native" in self.parts:
            from synth.recipes.rejection_sampling import check_reward_model

            check_reward_model(self.reward_model)


EXPORT_FORMS = ("boxed", "hashes")  # final answers explicit enough to be a gold answer


def exported_problems(folder: str | Path, limit: int | None = None) -> Iterator[MathProblem]:
    """Problems from a folder written by ``synth export``: each SFT row (train, then test) whose last
    assistant turn states its final answer in ``\\boxed{}`` or as ``#### ...`` becomes a problem (the
    last user turn) with that answer as its gold; other rows (prose, an answer only implied by the last
    number) are skipped. No such row at all is an error naming the folder."""
    import pyarrow.parquet as pq

    root = Path(folder)
    files = sorted((root / "sft").glob("train-*.parquet")) + sorted((root / "sft").glob("test-*.parquet"))
    if not files:
        raise InputFileError(f"problems {folder}: a folder, but no sft/*.parquet of `synth export` in it")
    n = 0
    for path in files:
        for row in pq.read_table(path, columns=["id", "messages"]).to_pylist():
            users = [m["content"] for m in row["messages"] if m["role"] == "user"]
            answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
            found = extract_answer(answers[-1]) if users and answers else None
            if found is None or found[1] not in EXPORT_FORMS or not normalize(found[0]):
                continue
            if limit is not None and n >= limit:
                return
            yield MathProblem(
                id=str(row["id"]),
                problem=users[-1].strip(),
                answer=found[0],
                source=root.name,
                provenance=Provenance(capability=CAPABILITY, source=root.name),
                meta={"reference_solution": answers[-1]},
            )
            n += 1
    if n == 0:
        raise InputFileError(
            f"problems {folder}: no exported SFT row states its final answer in \\boxed{{}} or as '#### ...'"
        )


def _problems(cfg: MultilingualConfig, run: Run) -> Iterator[MathProblem]:
    limit = cfg.problems_limit or None
    if Path(cfg.problems).is_dir():
        return exported_problems(cfg.problems, limit)
    return read_problems(cfg.problems, skip_invalid=cfg.skip_invalid, on_bad=run.quarantine, limit=limit)


def _parallel_pairs(cfg: MultilingualConfig, run: Run):
    """The parallel pairs, each language checked against the translation prompt's examples."""
    examples = load_prompt("multilingual/translate").data["examples"]
    pairs = read_parallel(cfg.parallel, skip_invalid=cfg.skip_invalid, on_bad=run.quarantine,
                          limit=cfg.parallel_limit or None)  # fmt: skip
    for pair in pairs:
        missing = [x for x in (pair.source_language, pair.target_language) if x not in examples]
        if missing:
            raise ConfigError(
                f"{cfg.parallel}: pair {pair.id!r}: no few-shot example for {', '.join(missing)} in "
                "synth/prompts/multilingual/translate.yaml: add one"
            )
        yield pair


@dataclass
class _Parts:
    sft: list[Any] = field(default_factory=list)
    preference: list[Any] = field(default_factory=list)
    prompts: Any = None


@recipe("multilingual", MultilingualConfig)
def multilingual(run: Run, cfg: MultilingualConfig) -> Outputs:
    """Translated reasoning, rejection-sampled native prompts and parallel-text translation tasks."""
    run.store.set_meta(LANGUAGE_META, True)
    lid, bs, targets = cfg.lid(), cfg.batch_size, tuple(cfg.languages)
    llm = dict(engine=run.engine, round=cfg.round)
    greedy = cfg.sampling(n=1, temperature=0.0)
    out = _Parts()
    sources = []

    # 1. translated reasoning: problems translated, answered natively K times, graded, language-checked
    if "translated" in cfg.parts:
        sources.append(_source("problems", cfg.problems, SHIPPED_PROBLEMS))
        pool = GraderPool(workers=cfg.grade_workers, timeout=cfg.grade_timeout)
        try:
            problems = run.source("problems", _problems(cfg, run))
            translated = run.map(TranslateProblems(sampling=greedy, languages=targets, **llm), problems, bs)
            translated = run.map(
                LanguageStage("problem_language", lid, _problem, _language), translated, 1000
            )
            solved = run.map(SolveInLanguage(sampling=cfg.sampling(), **llm), translated, bs)
            graded = run.map(GradeStage(pool, cfg.grade_timeout, name="grade_translated"), solved, bs * cfg.k)
            native = run.map(LanguageStage("solution_language", lid, _solution, _language), graded, 1000)
            out.sft.append(run.map(SolutionRows(), native, 1000))
        finally:
            pool.close()

    # 2. rejection-sampled native prompts: language-checked before selection, best of K by judge or RM
    if "native" in cfg.parts:
        sources.append(_source("seeds", cfg.seeds, SHIPPED_SEEDS))
        rows = read_seeds(cfg.seeds, CAPABILITY, skip_invalid=cfg.skip_invalid, on_bad=run.quarantine)
        seeds = run.source("seeds", islice(rows, cfg.seeds_limit or None))
        prompts = run.map(LanguageStage("prompt_language", lid, _prompt, allowed=targets), seeds, 1000)
        low, high = cfg.temperature_min, cfg.temperature_max
        sample = SampleAtDrawnTemperature(
            sampling=cfg.sampling(), capability=CAPABILITY, low=low, high=high, **llm
        )
        sampled = run.map(sample, prompts, bs)
        matched = run.map(LanguageStage("response_language", lid, _response, _prompt_language), sampled, 1000)
        if cfg.reward_model:
            score = "rm"
            scorer: Any = RewardStage(rm=partial(RewardModel, cfg.reward_model), name="rm_score", score=score)
        else:
            score = "judge"
            scorer = JudgeStage("judge", run.engine, load_prompt("general/judge"), question_answer,
                                score=score, max_tokens=cfg.judge_max_tokens)  # fmt: skip
        scored = run.map(scorer, matched, bs * cfg.k)
        out.sft.append(run.grouped(BestOfK(score), scored))
        out.preference.append(run.grouped(PreferencePairs(score), scored))
        out.prompts = prompts

    # 3. other NLP tasks: parallel sentences -> translations both ways, kept by round-trip chrF
    if "parallel" in cfg.parts:
        sources.append(_source("parallel", cfg.parallel, SHIPPED_PARALLEL))
        pairs = run.source("parallel", _parallel_pairs(cfg, run))
        allowed = tuple(dict.fromkeys([*targets, "en"]))
        translations = run.map(TranslatePairs(sampling=greedy, languages=allowed, **llm), pairs, bs)
        translations = run.map(
            LanguageStage("translation_language", lid, _translation, _target), translations, 1000
        )
        back = run.map(BackTranslate(sampling=greedy, **llm), translations, bs)
        out.sft.append(run.map(RoundTrip(cfg.chrf_threshold), back, 1000))

    run.store.set_meta("data_sources", sources)
    run.store.set_meta("outcomes", outcomes(run.store, cfg))
    return Outputs(prompts=out.prompts, sft=out.sft, preference=out.preference)


def _problem(p: Any) -> str:
    return p.problem


def _solution(s: Any) -> str:
    return s.text


def _language(row: Any) -> str:
    return row.meta["language"]


def _prompt(r: Any) -> str:
    return r.prompt[-1].content


def _response(r: Any) -> str:
    return r.response or ""


def _prompt_language(r: Any) -> str | None:
    return r.provenance.language if r.provenance else None


def _translation(t: Any) -> str:
    return t.translation or ""


def _target(t: Any) -> str:
    return t.target_language


def _source(kind: str, path: str, shipped: str) -> dict[str, str]:
    shipped_file = Path(path).resolve() == Path(shipped).resolve()
    return {
        "name": kind,
        "path": Path(path).name,
        "license": SHIPPED_LICENSE if shipped_file else "the user's (not recorded)",
    }


# part -> (the stage of its prompts per language, the stage of its final rows)
_YIELD = {
    "translated": ("translate_problems", "translated_sft"),
    "native": ("prompt_language", "best_of_k"),
    "parallel": ("translate", "round_trip"),
}


def outcomes(store: Store, cfg: MultilingualConfig) -> dict[str, str]:
    """Per language, each part's yield: its final SFT rows and the prompts it started from."""
    counts: dict[tuple[str, str], int] = {}
    for row in language_funnel(store):
        counts[(row["stage"], row["language"])] = row["kept"] + (
            row["rejected"] if row["stage"] in ("translate_problems", "translate") else 0
        )
    out = {}
    for lang in sorted({lg for _, lg in counts}):
        shown = [
            f"{part} {counts.get((last, lang), 0)} rows / {counts[(first, lang)]} prompts"
            for part, (first, last) in _YIELD.items()
            if part in cfg.parts and counts.get((first, lang))
        ]
        out[lang] = ", ".join(shown)
    return out
