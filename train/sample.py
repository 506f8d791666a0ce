"""`synth sample`: rejection sampling with a reward model (Llama 2 section 3.2.3, Llama 3 section 4.2.2).

For each prompt, K responses are sampled from the current policy, scored by the reward model, and
the best one is kept. With ``keep_best_across_rounds`` (Llama 2), the previous rounds' best rows are
rescored by the current reward model and kept where they beat this round's best, so a prompt never
regresses. Optionally only the top fraction of prompts by best score is kept. Best-vs-worst pairs by
reward (the previous best taking part) are written as preference rows.

A resumable pipeline in a run directory, like the generators (``synth export RUN --to DIR`` writes
the result)::

    prompts -> sample -> rm_score -> best_of_k [-> best_across_rounds] [-> top_quartile]
                                  \\-> preference_pairs

Prompts come from a JSONL file (``{"prompt": ...}``, ``{"messages": [...]}``) or an exported dataset
folder (the prompt part of its sft rows; a prompt's id is then the hash of its messages, the id a
JSONL prompt without an explicit id gets too). Previous rows may be an exported dataset folder, a
finished run directory or a JSONL of records or exported rows; they match this round's prompts by
prompt id, else by the prompt's messages.
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.engines.base import Engine
from synth.generators.base import GenerationConfig
from synth.io import check_unique_ids, read_records, seed_to_record
from synth.pipeline import Run, kept
from synth.records import Message, Provenance, SFTRecord, stable_id
from synth.stages.generate import Respond
from synth.stages.reward import RewardModel, RewardScorer, Scores, record_prompt
from synth.stages.select import best_of_k, preference_pairs, top_quantile
from synth.store import DB_NAME, Store

CAPABILITY = "rejection_sampling"
SCORE = "rm"
TEMPLATE = "rejection_sampling"


@dataclass(kw_only=True)
class SampleConfig(GenerationConfig):
    """``model`` is the policy that samples (path / served name; None: the embedded model)."""

    prompts: str  # JSONL of prompts or an exported dataset folder
    reward_model: str  # folder saved by `synth train rm`
    top_p: float = 1.0
    top_fraction: float | None = None  # keep prompts whose best reward is in this top fraction
    keep_best_across_rounds: str | None = None  # previous rounds' best rows
    capability: str = "general"  # for prompts that do not name one
    rm_batch_size: int = 8
    rm_max_length: int = 1024

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.top_fraction is not None and not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}")


# -- inputs --------------------------------------------------------------------------------------


def prompt_key(messages: list[Message]) -> str:
    """Id of a prompt from its messages (what seed_to_record gives a prompt without an id)."""
    return stable_id([{"role": m.role, "content": m.content} for m in messages])


def load_prompts(path: str | Path, capability: str, **read_kwargs: Any) -> list[SFTRecord]:
    """Prompt-only records from a JSONL of prompts or an exported dataset folder."""
    path = Path(path)
    if path.is_dir():
        return _export_prompts(path, capability)
    records = read_records(path, lambda d: seed_to_record(d, capability, path.name), **read_kwargs)
    check_unique_ids(records, path)
    return records


def _export_prompts(path: Path, capability: str) -> list[SFTRecord]:
    out: dict[str, SFTRecord] = {}
    for rec in _export_records(path):
        prompt = [Message.model_validate(m.model_dump()) for m in rec.prompt]
        pid = prompt_key(prompt)
        cap = rec.provenance.capability if rec.provenance else capability
        out.setdefault(
            pid,
            SFTRecord(
                id=pid,
                messages=prompt,
                provenance=Provenance(capability=cap, source=f"{path.name}:{rec.id}"),
            ),
        )
    if not out:
        raise ValueError(f"{path}: the exported dataset has no sft rows to take prompts from")
    return list(out.values())


def _export_records(path: Path) -> list[SFTRecord]:
    from synth.export import load_export

    dd = load_export(path, "sft")
    return [_row_to_record(row) for split in dd for row in dd[split]]


def _row_to_record(row: dict[str, Any]) -> SFTRecord:
    """An exported sft row (scores/provenance as JSON text, a capability column) or a record dict."""
    data = dict(row)
    if data.get("kind", "sft") != "sft":
        raise ValueError(f"expected an sft row, got kind={data.get('kind')!r}")
    capability = data.pop("capability", None)
    for name in ("scores", "provenance", "meta"):
        if isinstance(data.get(name), str):
            data[name] = json.loads(data[name]) if data[name].strip() else None
    if not data.get("provenance"):
        data["provenance"] = {"capability": capability} if capability else None
    data["scores"] = {k: v for k, v in (data.get("scores") or {}).items() if v is not None}
    for name in ("meta", "verdicts"):
        if data.get(name) is None:
            data.pop(name, None)
    return SFTRecord.model_validate(data)


def load_previous(path: str | Path) -> list[SFTRecord]:
    """Previous rounds' rows that have a response: from an exported dataset folder, a finished run
    directory (its final sft rows) or a JSONL of records / exported rows."""
    path = Path(path)
    if path.is_dir() and (path / DB_NAME).exists():
        from synth.stats import output_records

        store = Store(path, read_only=True)
        try:
            if not store.get_meta("outputs"):
                raise ValueError(f"{path} has no finished run output to take previous rows from")
            records = [r for r in output_records(store)[0] if isinstance(r, SFTRecord)]
        finally:
            store.close()
    elif path.is_dir():
        records = _export_records(path)
    else:
        records = read_records(path, _row_to_record)
    return [r for r in records if r.response]


# -- stages --------------------------------------------------------------------------------------


class _Respond(Respond):
    """Respond, keeping each prompt's own capability in the provenance."""

    def provenance(self, prompt: SFTRecord) -> Provenance:
        p = super().provenance(prompt)
        if prompt.provenance is not None:
            p.capability = prompt.provenance.capability
        return p


def best_across_rounds(
    prompts: list[SFTRecord],
    best: list[SFTRecord],
    previous: list[SFTRecord],
    rm: Scores,
    stage: str = "best_across_rounds",
) -> list[SFTRecord]:
    """Per prompt, this round's best or the previous rounds' best, whichever the current RM scores
    higher (a tie keeps the new one). The previous rows are rescored: rewards of different reward
    models are not comparable. A carried-over row keeps its own provenance (its round)."""
    by_id: dict[str, list[SFTRecord]] = {}
    by_key: dict[str, list[SFTRecord]] = {}
    for r in previous:
        if "prompt_id" in r.meta:
            by_id.setdefault(r.meta["prompt_id"], []).append(r)
        by_key.setdefault(prompt_key(r.prompt), []).append(r)
    new_best = {r.meta.get("prompt_id", r.id): r for r in best}
    olds = {p.id: by_id.get(p.id) or by_key.get(prompt_key(p.prompt)) or [] for p in prompts}
    todo = [r for p in prompts for r in olds[p.id]]
    rescored = rm.score([record_prompt(r) for r in todo], [r.response or "" for r in todo])
    score_of = {id(r): s for r, s in zip(todo, rescored, strict=True)}
    taken = {r.id for r in best}
    out: list[SFTRecord] = []
    for p in prompts:
        new = new_best.get(p.id)
        finite = [r for r in olds[p.id] if math.isfinite(score_of[id(r)])]
        old = max(finite, key=lambda r: (score_of[id(r)], r.id), default=None)
        if old is None:
            if new is not None:
                new.keep(stage, "no_previous_row")
                out.append(new)
            continue
        old_score = score_of[id(old)]
        if new is not None and new.scores[SCORE] >= old_score:
            new.meta["previous_round_score"] = old_score
            new.keep(stage, "beats_previous_round")
            out.append(new)
            continue
        carried = old.model_copy(deep=True)
        while carried.id in taken:
            carried.id = f"{carried.id}-prev"
        taken.add(carried.id)
        carried.verdicts = []
        carried.meta.update(
            prompt_id=p.id,
            carried_over=True,
            carried_from_round=old.provenance.round if old.provenance else None,
            previous_rm_score=old.scores.get(SCORE),
        )
        carried.scores[SCORE] = old_score
        carried.keep(stage, "previous_round_better")
        if new is not None:
            new.meta["previous_round_score"] = old_score
            new.reject(stage, "previous_round_better")
            out.append(new)
        out.append(carried)
    return out


# -- the pipeline --------------------------------------------------------------------------------


def run_sample(cfg: SampleConfig, *, engine: Engine | None = None, reward_model: Scores | None = None) -> Run:
    """Run (or resume) rejection sampling into ``cfg.out``. ``engine`` / ``reward_model`` replace the
    ones the config names (tests, or a caller that holds them already)."""
    if reward_model is None and not (Path(cfg.reward_model) / "config.json").is_file():
        raise FileNotFoundError(
            f"reward model not found: {cfg.reward_model} (a folder from `synth train rm`)"
        )
    previous = load_previous(cfg.keep_best_across_rounds) if cfg.keep_best_across_rounds else None

    run = cfg.open_run()
    try:
        _pipeline(run, cfg, previous, engine, reward_model)
    except BaseException:
        run.close()  # an interrupted run leaves its store closed and resumable
        raise
    return run


def _pipeline(
    run: Run,
    cfg: SampleConfig,
    previous: list[SFTRecord] | None,
    engine: Engine | None,
    reward_model: Scores | None,
) -> None:
    across = "best_across_rounds" if previous is not None else None
    final = "top_quartile" if cfg.top_fraction is not None else across or "best_of_k"
    run.store.set_meta("outputs", {"sft": final, "preference": "preference_pairs"})
    run.store.set_meta("capability", CAPABILITY)

    # 1. prompts, validated at the boundary
    loaded = load_prompts(cfg.prompts, cfg.capability, skip_invalid=cfg.skip_invalid, on_bad=run.quarantine)
    prompts = run.apply("prompts", loaded, lambda batch: batch)

    # 2. K samples per prompt from the policy (loaded only when a batch still needs it)
    held: dict[str, Any] = {}

    def sample(batch: list[SFTRecord]) -> list[SFTRecord]:
        if "respond" not in held:
            held["respond"] = _Respond(
                cfg.cached_engine(run, engine), cfg.sampling(), capability=cfg.capability,
                template=TEMPLATE, round=cfg.round,
            )  # fmt: skip
        return held["respond"](batch)

    candidates = run.map_batches("sample", prompts, sample, batch_size=cfg.batch_size)
    if held.pop("respond", None) is not None:
        _free_accelerator()  # the policy's memory goes back before the reward model loads

    def rm() -> Scores:
        if "rm" not in held:
            held["rm"] = reward_model or RewardModel(
                cfg.reward_model, batch_size=cfg.rm_batch_size, max_length=cfg.rm_max_length
            )
        return held["rm"]

    # 3. reward-model scores, 4. best of K
    def score(batch: list[SFTRecord]) -> list[SFTRecord]:
        return RewardScorer(rm(), name=SCORE, stage="rm_score")(batch)

    scored = run.map_batches("rm_score", kept(candidates), score, batch_size=cfg.batch_size * cfg.k)
    best = run.apply("best_of_k", kept(scored), lambda rs: best_of_k(rs, SCORE))
    chosen = kept(best)

    # 5. (Llama 2) the best so far across rounds, by the current reward model
    if previous is not None:
        result = run.apply(
            "best_across_rounds",
            prompts,
            lambda ps: best_across_rounds(ps, _copies(kept(best)), previous, rm()),
        )
        chosen = kept(result)

    # 6. optionally the top fraction of prompts by best reward
    if cfg.top_fraction is not None:
        run.apply("top_quartile", chosen, lambda rs: top_quantile(rs, SCORE, cfg.top_fraction))

    # 7. preference rows: best vs worst by reward (a carried-over previous best takes part)
    carried = [r for r in chosen if r.meta.get("carried_over")]

    run.apply("preference_pairs", kept(scored) + carried, lambda rs: preference_pairs(rs, SCORE))
    run.log("run_done")


def _copies(records: list[SFTRecord]) -> list[SFTRecord]:
    # rows a stage reads from a closure (not its batch, which Run copies) must be copied by hand
    return [r.model_copy(deep=True) for r in records]


def _free_accelerator() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
