"""General chat (Llama 3 section 4.2.2, "rejection sampling" for general prompts, and 4.2.3's
quality filtering), as a recipe:

    seeds -> K responses -> rule cleaning -> LLM judge -> best of K -> top fraction -> SFT rows
                                                       \\-> best vs worst -> preference rows

The paper samples K = 10-30 responses per prompt and keeps the best by its reward model; its data
cleaning balances the share of responses with overused emoji, exclamation marks or an apologetic tone
(here: flagged responses kept up to ``max_flagged_share`` of the cleaned rows, the excess rejected; see
``synth.stages.cleaning``); its quality step keeps the top quartile by reward-model score (here: the
top ``top_fraction``, 0.25 by default, in the stage ``top_fraction``). Here the default scorer is an
LLM judge (G-Eval expectation over 1-10 where the engine gives token probabilities), so the recipe
runs without a trained reward model; the preference rows are best vs worst of the same K samples, with
Llama 2's four strengths by the quartile of the score gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synth.config import option
from synth.io import read_seeds
from synth.pipeline import Run
from synth.prompts import load_prompt
from synth.recipe import Outputs, RecipeConfig, recipe
from synth.stages.cleaning import Clean
from synth.stages.generate import Respond
from synth.stages.judge import JudgeStage, question_answer
from synth.stages.select import BestOfK, PreferencePairs, TopFraction

CAPABILITY = "general"
SCORE = "judge"
SHIPPED_SEEDS = str(Path(__file__).resolve().parents[2] / "pipelines" / "data" / "general_seeds.jsonl")


@dataclass(kw_only=True)
class GeneralConfig(RecipeConfig):
    seeds: str = option(SHIPPED_SEEDS, "JSONL of prompts: {'prompt': ...} or {'messages': [...]}.")
    top_fraction: float = option(
        0.25, "Keep prompts whose best score is in this top fraction.", gt=0.0, max=1.0
    )
    judge_max_tokens: int = option(64, "Max tokens of the judge's reply.", min=1)
    max_flagged_share: float = option(
        0.1,
        "Cleaning keeps responses flagged for overused emoji, exclamation marks or an apologetic tone "
        "up to this share of its kept rows, and rejects the excess (0: none kept, 1: all).",
        min=0.0,
        max=1.0,
    )


@recipe("general", GeneralConfig)
def general(run: Run, cfg: GeneralConfig) -> Outputs:
    """Seed prompts -> K responses -> cleaning -> LLM judge -> best of K -> top fraction; + pairs."""
    # 1. seeds, validated at the boundary (bad rows stop the run or go to quarantine)
    seeds = run.source("seeds", read_seeds(cfg.seeds, CAPABILITY, skip_invalid=cfg.skip_invalid,
                                           on_bad=run.quarantine))  # fmt: skip

    # 2. K responses per prompt
    respond = Respond(engine=run.engine, sampling=cfg.sampling(), capability=CAPABILITY, round=cfg.round)
    candidates = run.map(respond, seeds, batch_size=cfg.batch_size)

    # 3. rule cleaning, 4. judge score, 5. best of K, 6. top fraction of the best
    cleaned = run.map(Clean(max_flagged_share=cfg.max_flagged_share), candidates, batch_size=1000)
    judge = JudgeStage("judge", run.engine, load_prompt("general/judge"), question_answer, score=SCORE,
                       max_tokens=cfg.judge_max_tokens)  # fmt: skip
    judged = run.map(judge, cleaned, batch_size=cfg.batch_size * cfg.k)
    best = run.grouped(BestOfK(SCORE), judged)
    top = run.map(TopFraction(SCORE, cfg.top_fraction), best, batch_size=1000)

    # 7. preference rows: best vs worst judged response of each prompt
    pairs = run.grouped(PreferencePairs(SCORE), judged)
    return Outputs(prompts=seeds, sft=[top], preference=[pairs])
