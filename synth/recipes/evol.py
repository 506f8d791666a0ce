"""Prompt evolution (Evol-Instruct's in-depth rewriting, WizardLM 2023): seed prompts -> harder rewrites
-> a judge keeps rewrites that are harder and still answerable -> one answer each as SFT rows.

Beyond Llama 3's recipe, which grows its prompt pool from human-written prompts and a taxonomy; here a
small seed set is widened into harder prompts, which other recipes (rejection sampling, ``synth round``)
can sample from: the kept rewrites are this recipe's declared prompts. It is also the worked example of
README's "writing a recipe": one file, one YAML (``pipelines/configs/evol.yaml``) and its prompt files
(``synth/prompts/evol/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from synth.config import option
from synth.engines.base import Completion
from synth.io import read_seeds
from synth.pipeline import Run
from synth.prompts import load_prompt
from synth.recipe import Outputs, RecipeConfig, recipe
from synth.recipes.general import SHIPPED_SEEDS
from synth.records import Message, SFTRecord
from synth.stages.generate import Respond
from synth.stages.judge import JudgeStage
from synth.stages.llm import LLMStage, Reject

_HEADER = re.compile(r"^\W*rewritten prompt\W*?:\s*", re.IGNORECASE)


@dataclass(kw_only=True)
class EvolConfig(RecipeConfig):
    seeds: str = option(SHIPPED_SEEDS, "JSONL of seed prompts: {'prompt': ...} or {'messages': [...]}.")
    k: int = option(2, "Rewrites per seed prompt.", min=1)
    max_tokens: int = option(96, "Max new tokens of a rewrite or an answer.", min=1)
    min_score: float = option(6.0, "Keep rewrites the judge rates at least this (1-10).", min=1, max=10)
    judge_max_tokens: int = option(48, "Max tokens of the judge's reply.", min=1)


@dataclass(kw_only=True)
class Evolve(LLMStage):
    """Seed prompt -> k harder rewrites ('no_rewrite' when the reply holds none, 'unchanged')."""

    name: str = "evolve"

    def variables(self, seed: SFTRecord) -> dict[str, str]:
        return {"prompt": seed.prompt[-1].content}

    def output_id(self, seed: SFTRecord, j: int) -> str:
        return f"{seed.id}-e{j}"

    def parse(self, seed: SFTRecord, reply: Completion, j: int, messages) -> SFTRecord:
        text = _HEADER.sub("", reply.text.strip()).strip().splitlines()
        rewrite = text[0].strip() if text else ""
        if len(rewrite.split()) < 3:
            raise Reject("no_rewrite")
        if rewrite.lower() == seed.prompt[-1].content.strip().lower():
            raise Reject("unchanged")
        return SFTRecord(
            id=self.output_id(seed, j),
            messages=[Message(role="user", content=rewrite)],
            meta={"original": seed.prompt[-1].content, "evolved_from": seed.id},
        )


def _pair(rewrite: SFTRecord) -> dict[str, str]:
    return {"original": rewrite.meta["original"], "rewrite": rewrite.prompt[-1].content}


@recipe("evol", EvolConfig)
def evol(run: Run, cfg: EvolConfig) -> Outputs:
    """Seed prompts -> harder rewrites -> judge (harder and answerable) -> one answer each."""
    seeds = run.source("seeds", read_seeds(cfg.seeds, "general", skip_invalid=cfg.skip_invalid,
                                           on_bad=run.quarantine))  # fmt: skip
    evolve = Evolve(engine=run.engine, sampling=cfg.sampling(), capability="general",
                    prompt=load_prompt("evol/deepen"), round=cfg.round)  # fmt: skip
    rewrites = run.map(evolve, seeds, batch_size=cfg.batch_size)
    rate = JudgeStage("rate", run.engine, load_prompt("evol/rate"), _pair, score="evolution",
                      threshold=cfg.min_score, max_tokens=cfg.judge_max_tokens)  # fmt: skip
    harder = run.map(rate, rewrites, batch_size=cfg.batch_size)
    answer = Respond(name="answer", engine=run.engine, sampling=cfg.sampling(n=1), capability="general",
                     round=cfg.round)  # fmt: skip
    answered = run.map(answer, harder, batch_size=cfg.batch_size)
    return Outputs(prompts=harder, sft=[answered])
