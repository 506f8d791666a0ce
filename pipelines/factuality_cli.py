"""`synth eval factuality --model M`: refusal, over-refusal and wrong-answer rates of a model on held-out
factual probes (``synth.stages.factuality.evaluate``), before and after training on the factuality
recipe's data (``--baseline`` evaluates the model before training in the same command and reports the
change). Added to the `synth eval` group by ``add_eval_factuality``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import click
import typer

HELP = (
    "Refusal, over-refusal and wrong-answer rates of a model on held-out factual probes (greedy replies, "
    "and a forced best guess that tells whether the model knows). Prints one JSON object; with "
    "--baseline, the model before training too, and the change."
)


def _eval_config() -> type:
    from synth.config import Config, option
    from synth.recipes.factuality import SHIPPED_PROBES

    @dataclass(kw_only=True)
    class FactualityEvalConfig(Config):
        model: str | None = option(
            None, "Checkpoint path or hub id (served name for openai); default: embedded."
        )
        baseline: str | None = option(
            None, "Also evaluate this model (the one before training; 'embedded': the embedded model) on "
            "the same probes, and report both and the change (model minus baseline).",
        )  # fmt: skip
        probes: str = option(
            SHIPPED_PROBES, "JSONL of held-out probes {'id', 'question', 'answer', 'aliases'?, 'snippet'?}."
        )
        engine: str = option("hf", "hf, vllm or openai.", choices=("hf", "vllm", "openai"))
        base_url: str | None = option(None, "OpenAI-compatible server (engine openai).")
        baseline_base_url: str | None = option(
            None, "The baseline's OpenAI-compatible server (engine openai); default: --base-url."
        )
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

    def run(model: str | None, base_url: str | None) -> tuple[dict[str, Any], list[Any]]:
        kwargs = dict(cfg.engine_kwargs)
        if cfg.engine == "openai":
            kwargs["base_url"] = base_url
        engine = get_engine(cfg.engine, None if model == EMBEDDED else model, **kwargs)
        return evaluate(engine, probes, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size)

    try:
        probes = list(read_probes(cfg.probes, limit=cfg.limit or None))
        before = run(cfg.baseline, cfg.baseline_base_url or cfg.base_url) if cfg.baseline else None
        metrics, results = run(cfg.model, cfg.base_url)
    except (InputError, EngineError, FileNotFoundError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    about: dict[str, Any] = {"model": _name(cfg.model), "engine": cfg.engine, "probes": cfg.probes}
    extra: dict[str, Any] = {}
    report: dict[str, Any] = {}
    if before is not None:
        extra["baseline"] = {"model": _name(cfg.baseline), **before[0]}
        extra["change"] = change(before[1], results)
        report["baseline_results"] = [{**asdict(r), "outcome": r.outcome} for r in before[1]]
    if cfg.out:
        write_report(cfg.out, metrics, results, **about, **extra, **report, config=asdict(cfg))
    print(json.dumps({**about, **metrics, **extra}))


EMBEDDED = "embedded"


def change(before: list[Any], after: list[Any]) -> dict[str, float]:
    """Each rate after minus before, over the same probes (from the counts: no rounding twice)."""

    def counts(results: list[Any]) -> dict[str, int]:
        return {
            "refusal_rate": sum(r.refused for r in results),
            "over_refusal_rate": sum(r.outcome == "over_refusal" for r in results),
            "wrong_answer_rate": sum(r.outcome == "wrong" for r in results),
            "correct_rate": sum(r.outcome == "correct" for r in results),
            "knows_rate": sum(r.knows for r in results),
        }

    b, a, n = counts(before), counts(after), len(after)
    return {k: round((a[k] - b[k]) / n, 4) if n else 0.0 for k in a}


def _name(model: str | None) -> str:
    return "SmolLM2-135M-Instruct" if model in (None, EMBEDDED) else model


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
