"""`synth round`: one Llama-3-style post-training round, read top to bottom.

    generate (each configured recipe, with the current policy, each with its own options)
    -> reward model on ALL preference data so far, from the pre-trained model (one run per variant,
       averaged)
    -> rejection sampling: K samples per prompt from the current policy, best by the RM, top quartile,
       the previous rounds' best kept where the RM prefers it (Llama 2)
    -> SFT on the RS rows + the recipes' SFT rows, from the pre-trained model (one run per variant,
       averaged)
    -> DPO on the LATEST preference batch, from the SFT model (one run per variant)
    -> average the DPO variants -> the round's model, the next round's policy

As Llama 3 (section 4.1, figure 7): every round's reward model and SFT start from the pre-trained
checkpoint (``model``; the policy only samples), and at each of the RM, SFT and DPO stages the models
of runs with different data or hyper-parameters (``rm_variants``, ``sft_variants``,
``dpo_variants``: each entry overrides that stage's options) are averaged (``average_weights``: a
list per stage, default uniform). Rejection sampling defaults to the recipe's numbers (K = 10,
top_p = 1.0) and keeps the top quartile; the YAML's ``sample:`` changes any of them, and
``keep_best_across_rounds: false`` stops carrying earlier rounds' best rows forward (a path there
seeds round 1 with rows from elsewhere).

Every step writes a ``.done.json`` marker when it finishes: a stopped round resumes at the first
unfinished step (generation and sampling steps also resume inside, batch by batch).
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from synth.prompt_sources import is_run_dir
from synth.records import Record
from synth.stats import iter_outputs, summarize
from synth.store import Store

console = Console(stderr=True)
STAGES = ("rm", "sft", "dpo")  # the trained stages, each with its variants averaged
EVALS = ("math", "suite")  # evaluations a round can run on its model (``RoundConfig.evals``)
SHIPPED_SUITE = Path(__file__).resolve().parent / "configs" / "eval_suite.yaml"


@dataclass
class RoundConfig:
    out: str
    rounds: int = 1
    model: str | None = None  # the pre-trained model: round 1's policy, every RM and SFT's start
    engine: str = "hf"
    base_url: str | None = None
    seed: int = 0
    recipes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"general": {}})
    rm: dict[str, Any] = field(default_factory=dict)  # RMConfig fields
    # SampleConfig fields (k, max_tokens, temperature, top_fraction, ...), keep_best_across_rounds
    sample: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)  # SFTConfig fields
    dpo: dict[str, Any] = field(default_factory=dict)  # DPOConfig fields
    # one training run per entry (overrides of the stage's options), their models averaged
    rm_variants: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    sft_variants: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    dpo_variants: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    # {rm: [...], sft: [...], dpo: [...]}, one weight per variant (a plain list: the DPO variants')
    average_weights: dict[str, list[float]] | list[float] | None = None
    # evaluations of each round's model, after averaging: {math: {data, k, max_tokens, limit, ...}}
    # (``synth.stages.math.evaluate.evaluate_to``'s options), {suite: {path, limit}} (``synth eval
    # --suite``: every capability's held-out check; path default: the shipped suite); each writes
    # ``eval_<name>/metrics.json``, shown in ROUND.md next to the previous round's, and ROUNDS.md at
    # the top plots every metric round by round
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the quality layer and data mix over the round's recipe runs (``synth.recipes.mix.MixConfig``
    # fields but sources and out; {} for the defaults; None: no mix, the recipes' rows as they are):
    # the round's SFT and DPO data are then the mix's rows
    mix: dict[str, Any] | None = None

    def weights(self, stage: str) -> list[float] | None:
        """The averaging weights of one stage's variants (None: uniform)."""
        if isinstance(self.average_weights, dict):
            return self.average_weights.get(stage)
        return self.average_weights if stage == "dpo" else None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> RoundConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the round config must be a mapping")
        data.update({k: v for k, v in overrides.items() if v is not None})
        if "generators" in data:  # the key's name before recipes
            data["recipes"] = {**data.pop("generators"), **data.get("recipes", {})}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        if "out" not in data:
            raise ValueError(f"{path}: 'out' (the round directory) is required")
        cfg = cls(**data)
        for stage in STAGES:
            variants = getattr(cfg, f"{stage}_variants")
            if not isinstance(variants, list) or not variants:
                raise ValueError(f"{path}: {stage}_variants needs at least one entry ({{}} for the defaults)")
            if not all(isinstance(v, dict) for v in variants):
                raise ValueError(f"{path}: each {stage}_variants entry is a mapping of {stage} options")
        if isinstance(cfg.average_weights, dict):
            unknown = sorted(set(cfg.average_weights) - set(STAGES))
            if unknown:
                raise ValueError(
                    f"{path}: average_weights has unknown stages {unknown}; known: {list(STAGES)}"
                )
        for stage in STAGES:
            weights, n = cfg.weights(stage), len(getattr(cfg, f"{stage}_variants"))
            if weights is not None and len(weights) != n:
                raise ValueError(
                    f"{path}: average_weights needs one weight per {stage.upper()} variant ({n})"
                )
        keep = cfg.sample.get("keep_best_across_rounds", True)
        if not (keep is None or isinstance(keep, bool | str)) or keep == "":
            raise ValueError(f"{path}: sample.keep_best_across_rounds is true, false or a path of rows")
        unknown_evals = sorted(set(cfg.evals) - set(EVALS))
        if unknown_evals:
            raise ValueError(f"{path}: unknown evals {unknown_evals}; known: {sorted(EVALS)}")
        if cfg.mix is not None and not isinstance(cfg.mix, dict):
            raise ValueError(f"{path}: mix is a mapping of the mix's options ({{}} for the defaults)")
        if cfg.mix and {"sources", "out"} & set(cfg.mix):
            raise ValueError(f"{path}: mix.sources and mix.out are set by the round (its recipe runs)")
        if not all(isinstance(v, dict) for v in cfg.evals.values()):
            raise ValueError(f"{path}: each evals entry is a mapping of its options ({{}} for the defaults)")
        from synth.recipe import recipes

        unknown_recipes = sorted(set(cfg.recipes) - set(recipes()))
        if unknown_recipes:
            raise ValueError(f"{path}: unknown recipes {unknown_recipes}; known: {sorted(recipes())}")
        return cfg


# -- generation: any registered recipe, with the round's policy ----------------------------------
def _generate(
    name: str, opts: dict[str, Any], out: Path, policy: str | None, cfg: RoundConfig, rnd: int
) -> None:
    from synth.config import build
    from synth.recipe import get_recipe, run_recipe

    spec = get_recipe(name)
    shared = {"out": str(out), "engine": cfg.engine, "model": policy, "base_url": cfg.base_url,
              "seed": cfg.seed + rnd, "round": rnd}  # fmt: skip
    run_recipe(name, build(spec.config, shared, opts, where=f"recipes.{name}")).close()


def _mix(
    gen_runs: dict[str, Path], out: Path, policy: str | None, rm_dir: Path, cfg: RoundConfig, rnd: int
) -> None:
    """The quality layer and the data mix over this round's recipe runs (``synth mix``), exported to
    ``out/dataset`` with its card; the round's reward model scores the rows (its top quartile per
    capability is high quality, as in Llama 3), the judge and the taggers are the round's policy."""
    from synth.config import build
    from synth.export.mix_card import export_mix
    from synth.recipe import run_recipe
    from synth.recipes.mix import MixConfig

    shared = {"out": str(out), "engine": cfg.engine, "model": policy, "base_url": cfg.base_url,
              "seed": cfg.seed + rnd, "round": rnd, "reward_model": str(rm_dir),
              "sources": [{"path": str(d), "capability": name} for name, d in gen_runs.items()]}  # fmt: skip
    run_recipe("mix", build(MixConfig, shared, cfg.mix or {}, where="mix")).close()
    export_mix(out, out / "dataset", overwrite=True)


# -- the round --------------------------------------------------------------------------------
def run_rounds(cfg: RoundConfig) -> list[Path]:
    """Run ``cfg.rounds`` rounds; round r+1 generates with round r's model. Returns the models."""
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    (root / "round.json").write_text(json.dumps(asdict(cfg), indent=2))
    policy, models = cfg.model, []
    for rnd in range(1, cfg.rounds + 1):
        policy = str(run_round(cfg, rnd, policy))
        models.append(Path(policy))
    return models


def run_round(cfg: RoundConfig, rnd: int, policy: str | None) -> Path:
    root = Path(cfg.out)
    here = root / f"round_{rnd}"
    step = _Steps(here)
    console.rule(f"round {rnd}: policy {policy or 'embedded SmolLM2-135M-Instruct'}")

    # 1. generate with the current policy, one run per recipe
    gen_runs = {}
    for name, opts in cfg.recipes.items():
        out = here / "gen" / name
        gen_runs[name] = out
        step(f"generate_{name}", lambda n=name, o=opts, d=out: _generate(n, o, d, policy, cfg, rnd))

    # 2. reward model on all preference data so far (every round's recipes)
    # (rows are read inside the steps: a resumed round past them reads no store)
    pref_all_dir = here / "data" / "preference_all"
    step("data_preference_all", lambda: _export_rows(
        (r for k in range(1, rnd + 1)
         for r in _round_records(root / f"round_{k}", "preference", k, mixed=False)),
        "preference", pref_all_dir,
    ))  # fmt: skip
    # initialised from the pre-trained checkpoint every round (Llama 3), not from the last policy
    rm_dir = _variants(step, "rm", pref_all_dir, here, cfg.model, cfg)

    # 2b. the quality layer and the data mix over the recipes' rows, scored by this round's RM (when
    #     configured): the round's SFT and DPO data are then the mix's
    if cfg.mix is not None:
        step("mix", lambda: _mix(gen_runs, here / "mix", policy, rm_dir, cfg, rnd))

    # 3. rejection sampling with the policy, scored by the RM, best of K, top quartile
    prompts_file = here / "data" / "prompts.jsonl"
    step("collect_prompts", lambda: _write_prompts(gen_runs.values(), prompts_file))
    rs_dir = here / "sample"
    step("rejection_sample", lambda: _sample(prompts_file, policy, rm_dir, rs_dir, cfg, rnd))

    # 4. SFT on the RS rows plus the recipes' SFT rows, from the pre-trained checkpoint (Llama 3)
    sft_data = here / "data" / "sft"
    step("data_sft", lambda: _export_rows(
        itertools.chain(_records_of(rs_dir, "sft", f"r{rnd}-rs"), _round_records(here, "sft", rnd)),
        "sft", sft_data,
    ))  # fmt: skip
    sft_dir = _variants(step, "sft", sft_data, here, cfg.model, cfg)

    # 5. DPO on the latest preference batch (this round's recipes + RS best-vs-worst)
    pref_data = here / "data" / "preference_latest"
    step("data_preference_latest", lambda: _export_rows(
        itertools.chain(
            _round_records(here, "preference", rnd), _records_of(rs_dir, "preference", f"r{rnd}-rs")
        ),
        "preference", pref_data,
    ))  # fmt: skip
    dpo_dirs = []
    for i, variant in enumerate(cfg.dpo_variants):
        d = here / f"dpo_{i}"
        dpo_dirs.append(d)
        step(f"train_dpo_{i}", lambda d=d, v=variant, i=i: _train(
            "dpo", pref_data, d, str(sft_dir), {**cfg.dpo, **v}, cfg.seed + i))  # fmt: skip

    # 6. average the DPO variants into the round's model
    model_dir = here / "model"
    step("average", lambda: _average(dpo_dirs, model_dir, cfg.weights("dpo")))

    # 7. evaluate the round's model (each configured evaluation, the same way every round)
    for name, opts in cfg.evals.items():
        step(f"eval_{name}", lambda n=name, o=opts: _evaluate(n, o, here / f"eval_{n}", model_dir, cfg))
    step("card", lambda: _round_card(here, rnd, policy, cfg))
    return model_dir


def _variants(step: _Steps, kind: str, data: Path, here: Path, model: str | None, cfg: RoundConfig) -> Path:
    """Train ``kind`` once per variant from ``model`` and average them into ``here/kind`` (one
    variant: trained there directly, step ``train_<kind>``); returns the stage's model."""
    out = here / kind
    base, variants = getattr(cfg, kind), getattr(cfg, f"{kind}_variants")
    if len(variants) == 1:
        step(f"train_{kind}", lambda: _train(kind, data, out, model, {**base, **variants[0]}, cfg.seed))
        return out
    dirs = []
    for i, variant in enumerate(variants):
        d = here / f"{kind}_{i}"
        dirs.append(d)
        step(f"train_{kind}_{i}", lambda d=d, v=variant, i=i: _train(
            kind, data, d, model, {**base, **v}, cfg.seed + i))  # fmt: skip
    step(f"average_{kind}", lambda: _average(dirs, out, cfg.weights(kind)))
    return out


# -- steps ------------------------------------------------------------------------------------
class _Steps:
    """Run each named step once; a finished step leaves ``.done/<name>.json`` behind."""

    def __init__(self, root: Path) -> None:
        self.dir = root / ".done"
        self.dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, fn: Callable[[], Any]) -> None:
        marker = self.dir / f"{name}.json"
        if marker.exists():
            console.log(f"[dim]{name}: done earlier, skipped")
            return
        console.log(f"[bold]{name}")
        start = time.time()
        fn()
        marker.write_text(json.dumps({"step": name, "seconds": round(time.time() - start, 1)}))


def _round_records(here: Path, kind: str, rnd: int, mixed: bool = True) -> Iterator[Record]:
    """This round's recipe output rows of one kind, ids prefixed so rounds never collide (streamed);
    ``mixed``: the mix's rows where the round ran one (its quality layer and proportions over the
    recipes; the reward model, trained before the mix, learns from every recipe's pairs)."""
    if mixed and is_run_dir(here / "mix"):
        yield from _records_of(here / "mix", kind, f"r{rnd}-mix")
        return
    gen = here / "gen"
    runs = sorted(p for p in gen.iterdir() if is_run_dir(p)) if gen.exists() else []
    for run in runs:
        yield from _records_of(run, kind, f"r{rnd}-{run.name}")


def _records_of(run_dir: Path, kind: str, prefix: str) -> Iterator[Record]:
    if not is_run_dir(run_dir):
        return
    store = Store(run_dir, read_only=True)
    try:
        for r in iter_outputs(store, kind):
            r.id = f"{prefix}-{r.id}"
            yield r
    finally:
        store.close()


def _export_rows(rows: Iterable[Record], kind: str, out: Path) -> None:
    """A round's merged dataset (rows from several runs, streamed), with its data card."""
    from synth.export import export_dataset

    summary = {"name": out.name, "funnel": [], "models": [], "engines": [], "templates": {}, "sampling": {}}
    export_dataset(rows if kind == "sft" else [], rows if kind == "preference" else [], out, summary)


def _write_prompts(runs, path: Path) -> None:
    """The prompts every recipe of the round declared (its prompts stage), each once."""
    from synth.prompt_sources import prompts_of_run

    seen: set[str] = set()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for run in runs:
            for r in prompts_of_run(run):
                if r.id not in seen:
                    seen.add(r.id)
                    messages = [m.model_dump(exclude_none=True) for m in r.prompt]
                    fh.write(json.dumps({"id": r.id, "messages": messages}) + "\n")


def _train(kind: str, data: Path, out: Path, model: str | None, overrides: dict[str, Any], seed: int) -> None:
    from train import run_recipe

    if out.exists():
        shutil.rmtree(out)  # an unfinished training step starts over
    run_recipe(kind, str(data), model, output_dir=str(out), seed=seed, **overrides)


def sample_config(prompts: Path, policy: str | None, rm_dir: Path, out: Path, cfg: RoundConfig, rnd: int):
    """Round ``rnd``'s rejection-sampling config: the recipe's own defaults (K = 10, top_p = 1.0), the
    top quartile, and the previous round's best rows carried forward, unless ``cfg.sample`` says
    otherwise (``keep_best_across_rounds``: true, false, or a source of rows for round 1)."""
    from synth.recipes.rejection_sampling import SampleConfig

    opts = {"top_fraction": 0.25, **cfg.sample}
    keep = opts.pop("keep_best_across_rounds", True)
    previous = Path(cfg.out) / f"round_{rnd - 1}" / "sample"
    if keep is False or keep is None:
        opts["keep_best_across_rounds"] = None
    elif rnd > 1 and is_run_dir(previous):
        opts["keep_best_across_rounds"] = str(previous)  # its best rows already carry earlier rounds'
    else:
        opts["keep_best_across_rounds"] = keep if isinstance(keep, str) else None
    return SampleConfig(
        prompts=str(prompts),
        model=policy,
        reward_model=str(rm_dir),
        out=str(out),
        engine=cfg.engine,
        base_url=cfg.base_url,
        seed=cfg.seed + rnd,
        round=rnd,
        **opts,
    )


def _sample(prompts: Path, policy: str | None, rm_dir: Path, out: Path, cfg: RoundConfig, rnd: int) -> None:
    from synth.recipes.rejection_sampling import run_sample

    run_sample(sample_config(prompts, policy, rm_dir, out, cfg, rnd)).close()


def _average(dirs: list[Path], out: Path, weights: list[float] | None) -> None:
    from train.average import average_checkpoints

    if out.exists():
        shutil.rmtree(out)
    if len(dirs) == 1:
        shutil.copytree(dirs[0], out)
    else:
        average_checkpoints([str(d) for d in dirs], str(out), weights=weights)


def _evaluate(name: str, opts: dict[str, Any], out: Path, model: Path, cfg: RoundConfig) -> None:
    """One evaluation of the round's model; its metrics land in ``out/metrics.json``."""
    if name == "suite":
        from synth.evaluate.suite import EvalSuite, run_suite

        unknown = sorted(set(opts) - {"path", "limit"})
        if unknown:
            raise ValueError(f"evals.suite: unknown keys {unknown}; known: ['limit', 'path']")
        suite = EvalSuite.from_yaml(opts.get("path") or SHIPPED_SUITE)
        headline = run_suite(suite, str(model), out, engine=cfg.engine, limit=opts.get("limit"))
        console.log(f"eval_suite: {json.dumps(headline)}")
    elif name == "math":
        from synth.stages.math.evaluate import evaluate_to

        metrics = evaluate_to(out, str(model), **{"engine": cfg.engine, **opts})
        console.log(f"eval_math: {json.dumps({k: v for k, v in metrics.items() if k != 'data'})}")


def _round_card(here: Path, rnd: int, policy: str | None, cfg: RoundConfig) -> None:
    """ROUND.md: what the round started from, what each step made, and its metrics."""
    lines = [f"# Round {rnd}", "", f"- starting policy: `{policy or 'embedded SmolLM2-135M-Instruct'}`",
             f"- pre-trained model (RM and SFT start): `{cfg.model or 'embedded SmolLM2-135M-Instruct'}`",
             f"- model: `{here / 'model'}`", ""]  # fmt: skip
    for name in sorted((here / "gen").iterdir()) if (here / "gen").exists() else []:
        store = Store(name, read_only=True)
        s = summarize(store)
        store.close()
        lines.append(f"- recipe `{name.name}`: {s['rows']['sft']} SFT rows, {s['rows']['preference']} pairs")
    runs = [d.name for d in sorted(here.iterdir()) if d.is_dir() and d.name.split("_")[0] in STAGES]
    runs = sorted(runs, key=lambda name: (STAGES.index(name.split("_")[0]), name))
    for step in runs:
        metrics = here / step / "metrics.json"
        if metrics.exists():
            lines += ["", f"## {step}", "", "```json", metrics.read_text().strip(), "```"]
    lines += _evaluation_lines(here, rnd, cfg)
    lines += ["", "Datasets (each with its data card):", ""]
    lines += [f"- `{d}`" for d in sorted((here / "data").iterdir()) if d.is_dir()]
    if (here / "mix" / "dataset" / "README.md").exists():
        lines.append(f"- `{here / 'mix' / 'dataset'}` (the mix: its card shows the proportions and funnels)")
    (here / "ROUND.md").write_text("\n".join(lines) + "\n")
    _rounds_report(Path(cfg.out), rnd, cfg)


def _evaluation_lines(here: Path, rnd: int, cfg: RoundConfig) -> list[str]:
    """Each evaluation of this round next to the previous round's (a table with the change)."""
    from pipelines.eval_cli import compare_md
    from synth.evaluate.rounds import headlines

    lines: list[str] = []
    previous_dir = here.parent / f"round_{rnd - 1}"
    for name in cfg.evals:
        now = headlines(here, name)
        if now is None:
            continue
        before = headlines(previous_dir, name) if rnd > 1 else None
        what = f"round {rnd} vs round {rnd - 1}" if before is not None else f"round {rnd} (the first)"
        lines += ["", f"## eval_{name}: {what}", "", compare_md(before, now).rstrip()]
    return lines


def _rounds_report(root: Path, last: int, cfg: RoundConfig) -> None:
    """ROUNDS.md (and rounds.png): every evaluation metric of every round so far, as a table and a
    plot of the metrics over rounds."""
    from synth.evaluate.rounds import metric_series

    rounds = list(range(1, last + 1))
    series: dict[str, list[float | None]] = {}
    for (_, check, metric), values in metric_series(root, rounds, list(cfg.evals)).items():
        series[f"{check}/{metric}"] = values
    lines = ["# Rounds", "", f"Evaluation of each round's model (`{root}`).", ""]
    if not series:
        (root / "ROUNDS.md").write_text("\n".join([*lines, "No evaluation configured (evals:).", ""]))
        return
    lines += ["| metric | " + " | ".join(f"round {r}" for r in rounds) + " |",
              "|---|" + "---:|" * len(rounds)]  # fmt: skip
    for key, values in series.items():
        cells = ["-" if v is None else f"{v:.4f}" for v in values]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for key, values in series.items():
        points = [(r, v) for r, v in zip(rounds, values, strict=True) if v is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    ax.set_xlabel("round")
    ax.set_xticks(rounds)
    ax.set_ylabel("score")
    ax.set_title("held-out evaluation by round")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(root / "rounds.png", dpi=100)
    plt.close(fig)
    lines += ["", "![every metric, round by round](rounds.png)", ""]
    (root / "ROUNDS.md").write_text("\n".join(lines))
