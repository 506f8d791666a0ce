"""Recipes: one file per capability, each a config dataclass plus a function that composes stages.

    @recipe("general", GeneralConfig)
    def general(run: Run, cfg: GeneralConfig) -> Outputs:
        seeds = run.source("seeds", read_seeds(cfg, run))
        ...
        return Outputs(prompts=seeds, sft=[top], preference=[pairs])

A recipe registers by name; ``synth run NAME`` builds its config from options, a YAML file and
``--set`` overrides (``synth.config``), opens the run directory, gives the recipe the run's cached
engine (``run.engine``, built from the config on first use), and stores the outputs the recipe
declares, so export, rejection sampling and ``synth round`` find every recipe's prompts and rows
without naming conventions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import pkgutil
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synth.config import Config, ConfigError, option, row_neutral
from synth.engines import Engine, SamplingParams, get_engine, resolve_engine
from synth.engines.embedded import is_embedded
from synth.pipeline import CachedEngine, Rows, Run
from synth.store import DiskFull, disk_full

EMBEDDED = "SmolLM2-135M-Instruct"
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # "name" or "org/name"; anything else names a path


@dataclass(kw_only=True)
class RecipeConfig(Config):
    """What every recipe's config shares: where the run lives, which engine and model, how to sample."""

    out: str = option(help="Run directory; the same command resumes a stopped run.", rows=False)
    engine: str = option("auto", "auto (vllm where it runs here, else hf), hf (transformers), vllm "
                         "(offline vLLM, GPU or CPU) or openai (any server).",
                         choices=("auto", "hf", "vllm", "openai"))  # fmt: skip
    model: str | None = option(None, "Model path or hub id; default: the embedded SmolLM2-135M-Instruct.")
    base_url: str | None = option(
        None,
        "OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1; several, comma-separated, share the "
        "requests (least-loaded, failover when one is down).",
        rows=False,
    )
    request_timeout: float = option(
        600.0,
        "Seconds one attempt of an openai-engine request may take in all, then it is retried.",
        gt=0,
        rows=False,
    )
    batches_in_flight: int = option(
        0,
        "Batches an engine stage keeps in flight at once (commits stay in order, one per batch); "
        "0: 16 with the openai engine (its request window stays full past slow retries), else 1; "
        "hf and vllm take one call at a time (1), Ray replicas at least 2 each.",
        min=0,
        rows=False,
    )
    ray: str | None = option(
        None,
        "Run the engine as Ray actors: 'auto' starts a local Ray instance, an address "
        "(HOST:6379, ray://HOST:10001) joins that cluster.",
        rows=False,
    )
    replicas: int = option(
        1,
        "Engine replicas as Ray actors (needs --ray); vLLM: one GPU each, or tensor_parallel_size GPUs.",
        min=1,
        rows=False,
    )
    k: int = option(4, "Samples per prompt (Llama 3 uses 10-30).", min=1)
    max_tokens: int = option(256, "Max new tokens per model call.", min=1)
    temperature: float = option(0.8, "Sampling temperature.", min=0.0)
    top_p: float = option(0.95, "Nucleus sampling mass.", min=0.0, max=1.0)
    seed: int = option(0, "Sampling seed (the engine cache keys on it).")
    batch_size: int = option(8, "Items per committed batch.", min=1, rows=False)
    round: int = option(0, "Post-training round the rows belong to.", min=0)
    skip_invalid: bool = option(False, "Quarantine malformed input rows instead of stopping.", rows=False)
    engine_kwargs: dict[str, Any] = option(
        default_factory=dict,
        help="Engine options (YAML mapping), e.g. {batch_size: 16, dtype: bfloat16}.",
        rows=False,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.replicas > 1 and not self.ray:
            raise ConfigError(
                f"replicas: {self.replicas} engine replicas run as Ray actors: add --ray auto (a local "
                "Ray instance) or --ray ADDRESS (a cluster)"
            )

    def check(self) -> None:
        """What must hold before the run directory opens (a model folder, an isolating sandbox):
        raise with a one-line message. A failed check leaves no run behind to refuse a corrected
        command."""

    def check_model(self) -> None:
        """The model must be there before the run opens (``run_recipe`` asks, unless an engine is
        handed in): a path that exists, or a hub id in the local Hugging Face cache (nothing is
        downloaded at run time; ``HF_HUB_OFFLINE=0`` lets the engine download it). The openai engine's
        model is a name its server serves: not checked here."""
        model = self.model
        if model is None or self.engine == "openai" or is_embedded(model):
            return
        if Path(model).expanduser().exists():
            return
        if not HUB_ID.fullmatch(model) or model.startswith((".", "~")):
            raise FileNotFoundError(f"--model {model}: no such file or directory")
        if os.environ.get("HF_HUB_OFFLINE", "1").lower() in ("0", "false", "no", "off"):
            return
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise FileNotFoundError(
                f"--model {model}: not a folder, and not a hub id in the local Hugging Face cache (nothing "
                f"is downloaded at run time): give the model's folder, or download it first "
                f"(`huggingface-cli download {model}`)"
            )

    def sampling(self, **overrides: Any) -> SamplingParams:
        params = dict(n=self.k, temperature=self.temperature, top_p=self.top_p,
                      max_tokens=self.max_tokens, seed=self.seed)  # fmt: skip
        return SamplingParams(**{**params, **overrides})


@dataclass
class Outputs:
    """What a recipe leaves behind: the stage of its prompts and any number of output stages per kind
    (``sft``, ``preference``, and kinds that come later, such as step labels)."""

    prompts: Rows | None = None
    capability: str | None = None  # the run's capability; default: the recipe's name
    sft: list[Rows] = field(default_factory=list)
    preference: list[Rows] = field(default_factory=list)
    extra: dict[str, list[Rows]] = field(default_factory=dict)

    def to_meta(self) -> dict[str, Any]:
        kinds = {"sft": self.sft, "preference": self.preference, **self.extra}
        out: dict[str, Any] = {k: [s for r in v for s in r.stages] for k, v in kinds.items()}
        out["prompts"] = self.prompts.stages[0] if self.prompts else None
        return out


@dataclass
class Recipe:
    name: str
    config: type[RecipeConfig]
    fn: Callable[[Run, Any], Outputs]
    summary: str
    doc: str


RECIPES: dict[str, Recipe] = {}


def recipe(name: str, config: type[RecipeConfig]) -> Callable[[Callable[[Run, Any], Outputs]], Callable]:
    """Register a recipe function under ``name`` with its config class."""

    def register(fn: Callable[[Run, Any], Outputs]) -> Callable:
        doc = sys.modules[fn.__module__].__doc__ or ""
        summary = (fn.__doc__ or doc or name).strip().splitlines()[0]
        RECIPES[name] = Recipe(name, config, fn, summary, doc)
        return fn

    return register


def _discover() -> None:
    import synth.recipes as package

    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"synth.recipes.{mod.name}")


def recipes() -> dict[str, Recipe]:
    _discover()
    return dict(sorted(RECIPES.items()))


def get_recipe(name: str) -> Recipe:
    found = recipes()
    if name not in found:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(found)}")
    return found[name]


def open_run(cfg: RecipeConfig, recipe_name: str, engine: Engine | None = None) -> Run:
    """The run directory, with its cached engine; a config there that differs in a field that changes
    rows is refused (fields declared ``option(..., rows=False)`` are not compared)."""
    config = {k: v for k, v in asdict(cfg).items() if k != "engine_kwargs"}
    run = Run(cfg.out, config={"recipe": recipe_name, **config}, neutral=row_neutral(cfg))
    model = engine.model if engine is not None else (cfg.model or EMBEDDED)
    name = engine.name if engine is not None else resolve_engine(cfg.engine)

    built: list[Engine] = []
    lock = threading.Lock()  # batches in flight may all miss the cache at once: build one engine

    def build() -> Engine:
        with lock:
            if not built:
                built.append(_build_engine(cfg))
            return built[0]

    run.engine = CachedEngine(engine or build, run.store, name=name, model=model)
    run.overlap = cfg.batches_in_flight or (16 if name == "openai" else 1)
    if cfg.ray and engine is None:  # every replica busy, and the next call queued behind it
        run.overlap = max(run.overlap, 2 * cfg.replicas)
    elif not (getattr(engine, "concurrent_calls", False) if engine is not None else name == "openai"):
        run.overlap = 1  # hf, vllm: one call at a time (``Engine.concurrent_calls``)
    return run


def _build_engine(cfg: RecipeConfig) -> Engine:
    """The configured engine: in this process, or (``--ray``) ``--replicas`` copies as Ray actors,
    each building it from the same engine, model and options (``engine_kwargs``; its
    ``ray_actor_options`` go to Ray: ``num_cpus``, ``num_gpus``, ``resources``...)."""
    kwargs = dict(cfg.engine_kwargs)
    if not cfg.ray:
        return get_engine(
            cfg.engine, cfg.model, base_url=cfg.base_url, request_timeout=cfg.request_timeout, **kwargs
        )
    from synth.engines.ray import RayEngine

    actor_options = kwargs.pop("ray_actor_options", None)
    if cfg.engine == "openai":  # what get_engine does with them, inside each replica
        kwargs.update(base_url=cfg.base_url, request_timeout=cfg.request_timeout)
    return RayEngine(
        cfg.engine,
        cfg.model,
        replicas=cfg.replicas,
        address=cfg.ray,
        engine_kwargs=kwargs,
        actor_options=actor_options,
    )


def run_recipe(name: str, cfg: RecipeConfig, engine: Engine | None = None) -> Run:
    """Run (or resume) recipe ``name``; ``engine`` replaces the configured one (tests, embedding)."""
    spec = get_recipe(name)
    if not isinstance(cfg, spec.config):
        raise TypeError(f"recipe {name!r} takes a {spec.config.__name__}, got {type(cfg).__name__}")
    if cfg.engine == "auto":  # the run records the engine it runs on (also when one is passed in)
        cfg = dataclasses.replace(cfg, engine=resolve_engine(cfg.engine))
    if engine is None:
        cfg.check_model()
    cfg.check()
    try:
        run = open_run(cfg, name, engine)
    except Exception as e:  # a full disk as the run opens: one line
        if isinstance(e, DiskFull) or disk_full(e, cfg.out) is None:
            raise
        raise disk_full(e, cfg.out) from e
    try:
        outputs = spec.fn(run, cfg)
        run.store.set_meta("outputs", outputs.to_meta())
        run.store.set_meta("capability", outputs.capability or name)
        run.log("run_done")
    except BaseException as e:
        with contextlib.suppress(Exception):  # a store that failed writing may fail closing too
            run.close()  # an interrupted run leaves its store closed and resumable
        if isinstance(e, DiskFull) or disk_full(e, run.dir) is None:
            raise
        raise disk_full(e, run.dir) from e  # ENOSPC from DuckDB or a file write: one line, rows kept
    return run
