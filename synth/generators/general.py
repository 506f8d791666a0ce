"""`synth run general`: seed prompts -> K responses -> rule cleaning -> judge -> best of K ->
top quartile -> SFT rows, plus best-vs-worst preference rows for DPO.

Reads top to bottom, one stage per step; each stage's rule lives in ``synth.stages``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from synth.engines import Engine, SamplingParams, get_engine
from synth.io import check_unique_ids, read_records, seed_to_record
from synth.pipeline import CachedEngine, Run, kept
from synth.stages.cleaning import clean
from synth.stages.generate import Respond
from synth.stages.judge import LLMJudge
from synth.stages.select import best_of_k, preference_pairs, top_quantile

CAPABILITY = "general"
SCORE = "judge"


@dataclass
class GeneralConfig:
    seeds: str
    out: str
    engine: str = "hf"
    model: str | None = None
    base_url: str | None = None
    k: int = 4
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 8  # prompts per committed batch
    top_fraction: float = 0.25
    judge_max_tokens: int = 64
    round: int = 0
    skip_invalid: bool = False
    engine_kwargs: dict = field(default_factory=dict)


def run_general(cfg: GeneralConfig, engine: Engine | None = None) -> Run:
    """Run (or resume) the pipeline; ``engine`` replaces the configured one (tests, embedding)."""
    run = Run(cfg.out, config={k: v for k, v in asdict(cfg).items() if k != "engine_kwargs"})
    run.store.set_meta("outputs", {"sft": "top_quartile", "preference": "preference_pairs"})
    run.store.set_meta("capability", CAPABILITY)

    # 1. seeds, validated at the boundary (bad rows stop the run or go to quarantine)
    def quarantine(bad):
        run.store.quarantine(bad.path, bad.line, bad.field, bad.error, bad.raw)

    seeds = read_records(
        cfg.seeds,
        lambda d: seed_to_record(d, CAPABILITY, Path(cfg.seeds).name),
        skip_invalid=cfg.skip_invalid,
        on_bad=quarantine,
    )
    check_unique_ids(seeds, cfg.seeds)
    prompts = run.apply("seeds", seeds, lambda batch: [r.model_copy(deep=True) for r in batch])

    # 2. K responses per prompt
    engine = CachedEngine(
        engine or get_engine(cfg.engine, cfg.model, base_url=cfg.base_url, **cfg.engine_kwargs), run.store
    )
    sampling = SamplingParams(
        n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed
    )
    respond = Respond(engine, sampling, capability=CAPABILITY, round=cfg.round)
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
