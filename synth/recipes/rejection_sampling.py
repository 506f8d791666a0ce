"""Rejection sampling with a reward model (Llama 2 section 3.2.3, Llama 3 section 4.2.2), as a recipe:

    prompts -> sample (K per prompt, the policy) -> rm_score -> best_of_k [-> best_across_rounds]
                                                            [-> top_fraction] -> SFT rows
                                                \\-> preference_pairs (best vs worst by reward)

Llama 3 samples K outputs per prompt (typically 10-30) from the latest policy and keeps the one its
reward model scores highest; the defaults follow it (K = 10, sampling from the whole distribution:
top_p = 1.0). The temperature stays at 0.8: Llama 2 found 1.2-1.3 best for its 70B model, which makes
a small policy ramble. Llama 2 keeps the best samples of all earlier rounds in play
(``keep_best_across_rounds``): earlier rounds' best rows are rescored by the current reward model
(rewards of different reward models are not comparable) and kept where they beat this round's best,
so a prompt never regresses. Beyond the papers' rejection sampling: the top fraction of prompts by best
reward can be kept (``top_fraction``; Llama 3's quality filtering keeps the top quartile, 0.25), and
each prompt's best vs worst sample (a carried-over earlier best taking part) becomes a preference row,
with Llama 2's four strengths by the quartile of the reward gap. Llama 3's style-steering system
prompts are not added: prompts are sampled as they come.

Prompts come from a JSONL file, an exported dataset folder or a finished run (its declared prompt
stage); earlier rounds' rows from an exported dataset folder, a finished run or a JSONL of records or
exported rows (``synth.prompt_sources``). They match this round's prompts by prompt id, else by the
prompt's messages.
"""

from __future__ import annotations

import gc
import math
import sys
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from synth.config import option
from synth.engines.base import Engine
from synth.pipeline import Run
from synth.prompt_sources import load_previous, load_prompts, prompt_key
from synth.recipe import Outputs, RecipeConfig, recipe, run_recipe
from synth.records import Provenance, SFTRecord
from synth.stages.generate import Respond
from synth.stages.reward import RewardModel, RewardStage, Scores
from synth.stages.select import BestOfK, PreferencePairs, TopFraction, group_by_prompt

NAME = "rejection-sampling"
CAPABILITY = "rejection_sampling"
SCORE = "rm"
TEMPLATE = "rejection_sampling"

# a reward model handed in by ``run_sample`` (tests, a caller that holds one) instead of the config's
_REWARD_MODEL: ContextVar[Scores | None] = ContextVar("rejection_sampling_reward_model", default=None)


@dataclass(kw_only=True)
class SampleConfig(RecipeConfig):
    """``model`` is the policy; ``k`` and ``top_p`` default to Llama 3's sampling (see the module)."""

    prompts: str = option(
        help="JSONL of prompts ({'prompt': ...} / {'messages': [...]}), an exported dataset folder or a "
        "finished run directory (its prompt stage)."
    )
    reward_model: str = option(help="Reward model folder (from `synth train rm`).")
    model: str | None = option(
        None, "The policy that samples: model path, hub id or served name; default: the embedded model."
    )
    k: int = option(10, "Samples per prompt (Llama 3: 10-30).", min=1)
    top_p: float = option(
        1.0, "Nucleus sampling mass (1.0: the policy's whole distribution).", min=0.0, max=1.0
    )
    top_fraction: float | None = option(
        None, "Keep only prompts whose best reward is in this top fraction (Llama 3: 0.25).", gt=0.0, max=1.0
    )
    keep_best_across_rounds: str | None = option(
        None, "Previous rounds' best rows (exported dataset, run directory or JSONL): keep the better."
    )
    capability: str = option("general", "Capability of prompts that do not name one.")
    rm_batch_size: int = option(8, "Sequences per reward-model forward pass.", min=1)
    rm_max_length: int = option(1024, "Tokens per scored sequence (as in reward-model training).", min=2)

    def check(self) -> None:
        if _REWARD_MODEL.get() is None:  # a reward model handed in needs no folder
            check_reward_model(self.reward_model)


@dataclass(kw_only=True)
class Sample(Respond):
    """``Respond`` as the stage "sample"; its rows name rejection sampling as their template (the
    prompt is the row's own chat, there is no prompt file)."""

    name: str = "sample"

    def provenance(self, item: SFTRecord) -> Provenance:
        p = super().provenance(item)
        p.template = TEMPLATE
        return p


@dataclass
class BestAcrossRounds:
    """Per prompt, this round's best or the previous rounds' best, whichever the current reward model
    scores higher (a tie keeps the new one). Run with ``Run.grouped`` over the prompts plus this
    round's best rows: a prompt none of whose samples survived still gets its previous best.

    A carried-over row keeps its provenance (its round) and is rescored under ``reward.score``; its id
    is ``{prompt id}-prev`` (its earlier id in ``meta["previous_id"]``)."""

    previous: list[SFTRecord]
    reward: RewardStage
    best_stage: str = "best_of_k"
    name: str = "best_across_rounds"
    by_id: dict[str, list[SFTRecord]] = field(default_factory=dict, init=False)
    by_key: dict[str, list[SFTRecord]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        # The previous rows are held in memory, not streamed from a store: they are the previous
        # round's final rows, one best row per prompt, read from a file, an export or a run directory.
        for r in self.previous:
            if "prompt_id" in r.meta:
                self.by_id.setdefault(r.meta["prompt_id"], []).append(r)
            self.by_key.setdefault(prompt_key(r.prompt), []).append(r)

    def __call__(self, rows: list[SFTRecord]) -> list[SFTRecord]:
        found = []
        for pid, group in group_by_prompt(rows).items():
            new = next((r for r in group if any(v.stage == self.best_stage for v in r.verdicts)), None)
            olds = self.by_id.get(pid) or self.by_key.get(prompt_key(group[0].prompt)) or []
            found.append((pid, new, olds))
        todo = [r for _, _, olds in found for r in olds]
        score_of = {id(r): s for r, s in zip(todo, self.reward.rewards(todo), strict=True)}
        out: list[SFTRecord] = []
        for pid, new, olds in found:
            old = max(
                (r for r in olds if math.isfinite(score_of[id(r)])),
                key=lambda r: (score_of[id(r)], r.id),
                default=None,
            )
            if old is None:
                if new is not None:
                    new.keep(self.name, "no_previous_row")
                    out.append(new)
                continue
            old_score = score_of[id(old)]
            if new is not None:
                new.meta["previous_round_score"] = old_score
                if new.scores[self.reward.score] >= old_score:
                    new.keep(self.name, "beats_previous_round")
                    out.append(new)
                    continue
                new.reject(self.name, "previous_round_better")
                out.append(new)
            out.append(self._carry(pid, old, old_score))
        return out

    def _carry(self, pid: str, old: SFTRecord, score: float) -> SFTRecord:
        carried = old.model_copy(deep=True)
        carried.id = f"{pid}-prev"
        carried.verdicts = []
        carried.meta.update(
            prompt_id=pid,
            previous_id=old.id,
            carried_over=True,
            carried_from_round=old.provenance.round if old.provenance else None,
            previous_rm_score=old.scores.get(self.reward.score),
        )
        carried.scores[self.reward.score] = score
        carried.keep(self.name, "previous_round_better")
        return carried


@recipe(NAME, SampleConfig)
def rejection_sampling(run: Run, cfg: SampleConfig) -> Outputs:
    """Prompts -> K samples from the policy -> reward model -> best of K [-> best across rounds]
    [-> top fraction]; + best-vs-worst pairs."""
    rm: Scores | Callable[[], Scores] | None = _REWARD_MODEL.get()
    if rm is None:  # the configured one, loaded with the first batch that needs a score
        rm = partial(RewardModel, cfg.reward_model, batch_size=cfg.rm_batch_size,
                     max_length=cfg.rm_max_length)  # fmt: skip
    previous = load_previous(cfg.keep_best_across_rounds) if cfg.keep_best_across_rounds else None

    # 1. prompts, validated at the boundary (bad rows stop the run or go to quarantine)
    prompts = run.source("prompts", load_prompts(cfg.prompts, cfg.capability, skip_invalid=cfg.skip_invalid,
                                                 on_bad=run.quarantine))  # fmt: skip

    # 2. K samples per prompt from the policy (built on the first batch the engine cache misses), each
    # keeping its prompt's capability; then the policy's memory goes back before the reward model loads
    sample = Sample(engine=run.engine, sampling=cfg.sampling(), capability="*", round=cfg.round)
    candidates = run.map(sample, prompts, batch_size=cfg.batch_size)
    del sample
    _release_policy(run)

    # 3. reward-model scores (the model loads with the first batch that needs one), 4. best of K
    reward = RewardStage(name="rm_score", score=SCORE, rm=rm)
    scored = run.map(reward, candidates, batch_size=cfg.batch_size * cfg.k)
    best = run.grouped(BestOfK(SCORE), scored)

    # 5. (Llama 2) the best so far across rounds, by the current reward model
    chosen = best
    if previous is not None:
        across = BestAcrossRounds(previous, reward, best_stage=best.stages[0])
        chosen = run.grouped(across, prompts + best)

    # 6. optionally the top fraction of prompts by best reward
    final = chosen
    if cfg.top_fraction is not None:
        final = run.map(TopFraction(SCORE, cfg.top_fraction), chosen, batch_size=1000)

    # 7. preference rows: best vs worst by reward, a carried-over previous best taking part. The kept
    # rows of best_across_rounds also repeat this round's winning best rows (same id, same reward):
    # a copy of a group's best changes neither its best nor its worst row, nor the gap.
    pairs = run.grouped(PreferencePairs(SCORE), (scored + chosen) if previous is not None else scored)
    return Outputs(prompts=prompts, capability=CAPABILITY, sft=[final], preference=[pairs])


def run_sample(cfg: SampleConfig, engine: Engine | None = None, reward_model: Scores | None = None) -> Run:
    """Run (or resume) rejection sampling into ``cfg.out``; ``engine`` / ``reward_model`` replace the
    ones the config names (tests, or a caller that holds them already)."""
    token = _REWARD_MODEL.set(reward_model)
    try:
        return run_recipe(NAME, cfg, engine=engine)
    finally:
        _REWARD_MODEL.reset(token)


def check_reward_model(path: str) -> None:
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"reward model not found: {path} (a folder from `synth train rm`)")


def _release_policy(run: Run) -> None:
    """The recipe is done with the policy: drop the run's engine and return the accelerator's cached
    memory, so the reward model loads into the room the policy held."""
    run.engine = None
    gc.collect()
    torch = sys.modules.get("torch")  # loaded only if an engine needed it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
