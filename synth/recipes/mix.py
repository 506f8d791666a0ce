"""The quality layer and the data mix (Llama 3 section 4.2.3, "Data processing and quality control",
and Table 7's mix), as a recipe over the outputs of other recipes:

    sources (runs or exported datasets of several recipes)
      -> decontaminate (held-out evaluation prompts: word n-gram overlap)
      -> reward model score (``reward_model``) and rubric judge (LLM, per-capability rubric)
      -> quality (RM top quartile per capability OR judge maximum: the union is kept)
      -> difficulty (Instag intention tags + a 3-point rating by the model)
      -> near-exact dedup (MinHash over word n-grams, across the project's runs)
      -> semantic dedup (embeddings, clustered, kept in quality x difficulty order under a cosine
         threshold)
      -> mix (each capability's best rows at the asked proportions) -> one SFT dataset
    the sources' preference rows -> decontaminate -> the dataset's preference rows

Llama 3 keeps a row as high quality when its reward-model score is in the top quartile **or** an LLM
judge gives it the maximum score, estimates difficulty with Instag and a 3-point rating, removes
semantic duplicates in order of quality x difficulty, and balances capabilities (Table 7: 52.66%
general English, 14.89% code, 3.01% multilingual, 8.14% exam-like, 21.19% reasoning and tools, 0.11%
long context: ``TABLE_7``, the default proportions). Beyond the paper: decontamination against the
project's held-out sets is a stage with its own funnel line, near-exact duplicates are caught across
runs, and every row left out keeps its reason, so the funnel shows what each step removed.

``synth mix --config mix.yaml --out DIR`` runs this recipe in ``DIR`` and exports ``DIR/dataset``,
whose card shows the mix asked and achieved (table and plot) and each source's funnel.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.config import ConfigError, option
from synth.pipeline import Rows, Run
from synth.recipe import Outputs, RecipeConfig, recipe
from synth.records import Provenance, Record
from synth.stages.mix import TABLE_7, MixSelect

HELD_OUT_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "data"
# the held-out sets of the shipped evaluation suite: every prompt of every check (documents included)
SHIPPED_HELD_OUT = [str(HELD_OUT_DIR.parent / "configs" / "eval_suite.yaml")]


@dataclass(kw_only=True)
class MixConfig(RecipeConfig):
    sources: list[Any] = option(
        default_factory=list,
        help="Runs or exported datasets to mix: paths, or {path, capability, name} mappings (capability: "
        "for rows that do not name theirs).",
    )
    proportions: dict[str, float] = option(
        default_factory=lambda: dict(TABLE_7),
        help="Share of each capability in the mix (normalised to 1); default: Llama 3's Table 7.",
    )
    total: int = option(0, "Rows in the mix; 0: the most that meet the proportions exactly.", min=0)
    rm_score: str = option("rm", "The rows' reward-model score (scores[...]) for the top quartile.")
    reward_model: str | None = option(
        None, "A reward model folder (`synth train rm`) that scores every row (scores[rm_score]) first; "
        "unset: the score the rows carry, if any.",
    )  # fmt: skip
    rm_top_fraction: float = option(
        0.25, "RM share kept per capability (Llama 3: top quartile).", gt=0, max=1
    )
    rubric: bool = option(True, "Score every row with the LLM rubric judge (judge maximum = high quality).")
    rubric_max_score: float = option(
        9.5, "A rubric score at or above this is the judge's maximum (1-10 scale).", min=1, max=10
    )
    difficulty: bool = option(True, "Instag tags and a 3-point difficulty rating by the model.")
    near_dedup_threshold: float = option(0.8, "MinHash Jaccard at or above which rows are near-duplicates.",
                                         gt=0, max=1)  # fmt: skip
    project_index: str | None = option(
        None, "MinHash index file shared by a project's runs (near-duplicates across runs).", rows=False
    )
    dedup_threshold: float = option(
        0.0, "Cosine similarity at or above which rows are semantic duplicates; 0: the shipped default.",
        min=0, max=1,
    )  # fmt: skip
    held_out: list[str] = option(
        default_factory=lambda: list(SHIPPED_HELD_OUT),
        help="Held-out evaluation sets no mixed row may overlap: JSONL files, or an evaluation suite "
        "(YAML: every check's prompts); default: the shipped suite.",
    )
    decontam_n: int = option(8, "Word n-gram length of the decontamination check.", min=1)
    decontam_threshold: float = option(
        0.5, "Share of a row's n-grams found in one held-out item that makes it contaminated.", gt=0, max=1
    )
    judge_max_tokens: int = option(64, "Max tokens of the rubric judge's and the taggers' replies.", min=1)

    def check(self) -> None:
        if not self.sources:
            raise ConfigError("sources: name at least one run directory or exported dataset to mix")
        for src in self.sources:
            path = Path(src["path"] if isinstance(src, dict) else src)
            if not path.exists():
                raise ConfigError(f"sources: {path}: no such run directory or dataset")


def _source_specs(cfg: MixConfig) -> list[dict[str, Any]]:
    specs, names = [], set()
    for i, src in enumerate(cfg.sources):
        spec = dict(src) if isinstance(src, dict) else {"path": src}
        if "path" not in spec:
            raise ConfigError(f"sources[{i}]: a mapping needs a 'path'")
        name = spec.get("name") or Path(spec["path"]).name or f"source{i}"
        while name in names:
            name = f"{name}_{i}"
        names.add(name)
        specs.append({**spec, "name": name})
    return specs


def _rows_of(spec: dict[str, Any], kind: str) -> Iterator[Record]:
    """A source's kept rows of ``kind``, ids prefixed with the source's name, its capability filled in
    where a row names none."""
    from synth.prompt_sources import iter_output_rows

    capability = spec.get("capability")
    for rec in iter_output_rows(spec["path"], kind):
        rec.id = f"{spec['name']}:{rec.id}"
        if rec.provenance is None:
            rec.provenance = Provenance(capability=capability or "unknown")
        elif capability and rec.provenance.capability in (None, "", "unknown"):
            rec.provenance.capability = capability
        rec.verdicts = []  # verdicts of the source run: its rows here are all kept ones
        yield rec


@recipe("mix", MixConfig)
def mix(run: Run, cfg: MixConfig) -> Outputs:
    """Runs of several recipes -> decontamination, quality, difficulty, dedup -> a data mix."""
    from synth.stages.decontam import Decontaminate, Decontaminator
    from synth.stages.dedup import DEFAULT_THRESHOLD, NearDuplicates, SemanticDedup
    from synth.stages.difficulty import DifficultyRating, InstagTags
    from synth.stages.quality import QualitySelect, RubricJudge

    specs = _source_specs(cfg)
    checker = Decontaminator(_held_out(cfg.held_out), n=cfg.decontam_n, threshold=cfg.decontam_threshold)

    # 1. every source's SFT rows, one source stage each (read again and compared on resume)
    sources: Rows | None = None
    for spec in specs:
        rows = run.source(f"source_{spec['name']}", _rows_of(spec, "sft"))
        sources = rows if sources is None else sources + rows
    assert sources is not None

    # 2. decontamination against the held-out evaluation sets
    clean = run.map(Decontaminate(checker), sources, batch_size=1000)

    # 3. quality: the reward model's score and the rubric judge, then RM top quartile per capability
    #    OR judge maximum
    if cfg.reward_model:
        from synth.stages.reward import RewardModel, RewardStage

        rm = functools.partial(RewardModel, cfg.reward_model)
        clean = run.map(
            RewardStage(rm=rm, name="reward", score=cfg.rm_score), clean, batch_size=cfg.batch_size
        )
    if cfg.rubric:
        judge = RubricJudge(run.engine, max_tokens=cfg.judge_max_tokens)
        clean = run.map(judge, clean, batch_size=cfg.batch_size)
    select = QualitySelect(
        rm_score=cfg.rm_score, fraction=cfg.rm_top_fraction, max_score=cfg.rubric_max_score
    )
    quality = run.map(select, clean, batch_size=1000)

    # 4. difficulty: intention tags and a 3-point rating (they rank, they do not filter)
    if cfg.difficulty:
        quality = run.map(InstagTags(engine=run.engine), quality, batch_size=cfg.batch_size)
        quality = run.map(DifficultyRating(engine=run.engine), quality, batch_size=cfg.batch_size)

    # 5. near-exact duplicates (MinHash, across the project), 6. semantic duplicates
    near = run.map(NearDuplicates(threshold=cfg.near_dedup_threshold, index_path=cfg.project_index), quality,
                   batch_size=1000)  # fmt: skip
    dedup = SemanticDedup(threshold=cfg.dedup_threshold or DEFAULT_THRESHOLD)
    semantic = run.map(dedup, near, batch_size=1000)

    # 7. the mix: each capability's best rows at the asked proportions
    mixed = run.map(MixSelect(dict(cfg.proportions), cfg.total), semantic, batch_size=1000)

    # the sources' preference rows (a source without any has no stage), decontaminated
    pref_sources: Rows | None = None
    for spec in specs:
        first, rest = _peek(_rows_of(spec, "preference"))
        if first is None:
            continue
        rows = run.source(f"preference_{spec['name']}", itertools.chain([first], rest))
        pref_sources = rows if pref_sources is None else pref_sources + rows
    pairs = []
    if pref_sources is not None:
        decontam = Decontaminate(checker, name="decontaminate_preference")
        pairs = [run.map(decontam, pref_sources, batch_size=1000)]
    return Outputs(prompts=None, sft=[mixed], preference=pairs, capability="mix")


def _held_out(paths: list[str]) -> dict[str, list[str]]:
    """Held-out prompts by set: a suite YAML gives each of its checks' prompts, a JSONL its rows."""
    from synth.evaluate.suite import held_out_prompts
    from synth.stages.decontam import read_held_out

    sets: dict[str, list[str]] = {}
    for path in paths:
        if str(path).endswith((".yaml", ".yml")):
            sets.update(held_out_prompts(path))
        else:
            sets.update(read_held_out([path]))
    return sets


def _peek(items: Iterator[Record]) -> tuple[Record | None, Iterator[Record]]:
    first = next(items, None)
    return first, items
