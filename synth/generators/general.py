"""`synth run general`: seed prompts -> K responses -> rule cleaning -> judge -> best of K ->
top quartile -> SFT rows, plus best-vs-worst preference rows for DPO.

Reads top to bottom, one stage per step; each stage's rule lives in ``synth.stages``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synth.engines import Engine
from synth.generators.base import GenerationConfig
from synth.io import check_unique_ids, read_records, seed_to_record
from synth.pipeline import Run, kept
from synth.stages.cleaning import clean
from synth.stages.generate import Respond
from synth.stages.judge import LLMJudge
from synth.stages.select import best_of_k, preference_pairs, top_quantile

CAPABILITY = "general"
SCORE = "judge"


@dataclass(kw_only=True)
class GeneralConfig(GenerationConfig):
    seeds: str  # JSONL of prompts
    top_fraction: float = 0.25  # keep prompts whose best score is in this top fraction
    judge_max_tokens: int = 64


def run_general(cfg: GeneralConfig, engine: Engine | None = None) -> Run:
    """Run (or resume) the pipeline; ``engine`` replaces the configured one (tests, embedding)."""
    run = cfg.open_run()
    run.store.set_meta("outputs", {"sft": "top_quartile", "preference": "preference_pairs"})
    run.store.set_meta("capability", CAPABILITY)

    # 1. seeds, validated at the boundary (bad rows stop the run or go to quarantine)
    seeds = read_records(
        cfg.seeds,
        lambda d: seed_to_record(d, CAPABILITY, Path(cfg.seeds).name),
        skip_invalid=cfg.skip_invalid,
        on_bad=run.quarantine,
    )
    check_unique_ids(seeds, cfg.seeds)
    prompts = run.apply("seeds", seeds, lambda batch: batch)

    # 2. K responses per prompt
    engine = cfg.cached_engine(run, engine)
    respond = Respond(engine, cfg.sampling(), capability=CAPABILITY, round=cfg.round)
    candidates = run.map_batches("generate", prompts, respond, batch_size=cfg.batch_size)

    # 3. rule cleaning, 4. judge score, 5. best of K, 6. top quartile of the best
    cleaned = run.apply("clean", kept(candidates), clean)
    judge = LLMJudge(engine, name=SCORE, max_tokens=cfg.judge_max_tokens)
    judged = run.map_batches("judge", kept(cleaned), judge, batch_size=cfg.batch_size * cfg.k)
    best = run.apply("best_of_k", kept(judged), lambda rs: best_of_k(rs, SCORE))
    run.apply("top_quartile", kept(best), lambda rs: top_quantile(rs, SCORE, cfg.top_fraction))

    # 7. preference rows: best vs worst judged response of each prompt
    run.apply("preference_pairs", kept(judged), lambda rs: preference_pairs(rs, SCORE))
    run.log("run_done")
    return run
