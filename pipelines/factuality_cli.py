"""`synth eval factuality --model M`: refusal, over-refusal and wrong-answer rates of a model on held-out
factual probes (``synth.stages.factuality.evaluate``), before and after training on the factuality
recipe's data. Added to the `synth eval` group by ``add_eval_factuality``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import click
import typer

HELP = (
    "Refusal, over-refusal and wrong-answer rates of a model on held-out factual probes (greedy replies, "
    "and a forced best guess that tells whether the model knows). Prints one JSON object."
)


def _eval_config() -> type:
    from synth.config import Config, option
    from synth.recipes.factuality import SHIPPED_PROBES

    @dataclass(kw_only=True)
    class FactualityEvalConfig(Config):
        model: str | None = option(
            None, "Checkpoint path or hub id (served name for openai); default: embedded."
        )
        probes: str = option(
            SHIPPED_PROBES, "JSONL of held-out probes {'id', 'question', 'answer', 'aliases'?, 'snippet'?}."
        )
        engine: str = option("hf", "hf, vllm or openai.", choices=("hf", "vllm", "openai"))
        base_url: str | None = option(None, "OpenAI-compatible server (engine openai).")
        max_tokens: int = option(64, "Max new tokens per reply.", min=1)
        limit: int = option(0, "Evaluate the first N probes only (0: all).", min=0)
        batch_size: int = option(16, "Probes per engine call.", min=1)
        out: str | None = option(None, "Also write the metrics and every probe's replies to this JSON file.")
        engine_kwargs: dict[str, Any] = option(default_factory=dict, help="Engine options (YAML mapping).")

    return FactualityEvalConfig


def _run(cfg: Any) -> None:
    from synth.engines import get_engine
    from synth.engines.base import EngineError
    from synth.io import InputError
    from synth.stages.factuality.evaluate import evaluate, read_probes, write_report

    _quiet()
    try:
        probes = list(read_probes(cfg.probes, limit=cfg.limit or None))
        kwargs = dict(cfg.engine_kwargs)
        if cfg.engine == "openai":
            kwargs["base_url"] = cfg.base_url
        engine = get_engine(cfg.engine, cfg.model, **kwargs)
        metrics, results = evaluate(engine, probes, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size)
    except (InputError, EngineError, FileNotFoundError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    about = {"model": cfg.model or "SmolLM2-135M-Instruct", "engine": cfg.engine, "probes": cfg.probes}
    if cfg.out:
        write_report(cfg.out, metrics, results, **about, config=asdict(cfg))
    print(json.dumps({**about, **metrics}))


def _quiet() -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def eval_command() -> click.Command:
    from synth.config import command

    return command(_eval_config(), "factuality", _run, HELP)


def add_eval_factuality(eval_app: typer.Typer) -> None:
    """Register `factuality` in the `synth eval` group."""

    @eval_app.command(
        "factuality",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        help=HELP + " `synth eval factuality --help` lists its options.",
    )
    def eval_factuality(ctx: typer.Context) -> None:
        eval_command().main(args=ctx.args, prog_name="synth eval factuality", standalone_mode=False)
