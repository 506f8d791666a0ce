"""`synth eval --model M --suite SUITE.yaml`: every capability of a model on held-out data in one command
(``synth.evaluate.suite``), as Llama 3 evaluates each round's model; and ``compare_md``, the table that
shows a round's numbers next to the previous round's.

``add_eval_suite(eval_app)`` makes the suite run the callback of the existing `synth eval` group (with
``invoke_without_command``), so `synth eval math ...` and `synth eval factuality ...` work as before and
`synth eval --model M` runs the suite (the shipped one, ``pipelines/configs/eval_suite.yaml``, unless
``--suite`` names another)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

SHIPPED_SUITE = Path(__file__).resolve().parent / "configs" / "eval_suite.yaml"
HELP = (
    "Evaluate a model on held-out data. `synth eval --model M [--suite SUITE.yaml] [--out DIR] "
    "[--engine E] [--limit N]` runs every check of a suite (math, factuality, code, tools, language, "
    "long_context; default: pipelines/configs/eval_suite.yaml) with one engine and writes OUT/metrics.json, "
    "OUT/EVAL.md and each check's metrics and per-item results. `synth eval math ...` and "
    "`synth eval factuality ...` run one evaluation with all its options."
)
console = Console(stderr=True)


def _fail(message: str) -> NoReturn:
    console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    raise typer.Exit(2)


def default_out(model: str | None) -> Path:
    """``runs/eval/<model>``: the embedded model's name, a checkpoint folder's name, a hub id with
    ``--`` for ``/``."""
    from synth.evaluate.suite import model_name

    name = model_name(model)
    if Path(name).exists():
        name = Path(name).resolve().name
    return Path("runs") / "eval" / (re.sub(r"[^\w.-]+", "--", name).strip("-") or "model")


def run_eval_suite(
    model: str | None = None,
    suite: Path | str = SHIPPED_SUITE,
    out: Path | str | None = None,
    engine: str | None = None,
    limit: int | None = None,
    base_url: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The command's work: read the suite, run it, print the table; any input, engine or sandbox
    problem ends it with one `error: ...` line and exit status 2."""
    from sandboxes.base import SandboxUnavailable
    from synth.engines import ENGINES
    from synth.engines.base import EngineError
    from synth.evaluate.suite import EvalSuite, SuiteError, run_suite
    from synth.io import InputError

    _quiet_libraries()
    if engine is not None and engine not in ENGINES:
        _fail(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    try:
        spec = EvalSuite.from_yaml(suite)
    except SuiteError as e:
        _fail(str(e))
    if base_url:
        spec.base_url = base_url
    target = Path(out) if out else default_out(model if model is not None else spec.model)
    try:
        headline = run_suite(spec, model, target, engine, limit=limit)
    except (InputError, EngineError, SandboxUnavailable, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    table = Table(title=f"synth eval: {target}")
    for column in ("check", "metric", "value", "n"):
        table.add_column(column, justify="right" if column in ("value", "n") else "left")
    for check, metrics in headline.items():
        for metric, value in metrics.items():
            if metric != "n":
                table.add_row(check, metric, _fmt(value), str(metrics["n"]))
    Console().print(table)
    console.print(f"wrote {target / 'metrics.json'} and {target / 'EVAL.md'}", soft_wrap=True)
    return headline


def _quiet_libraries() -> None:
    import os

    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def add_eval_suite(eval_app: typer.Typer) -> None:
    """Make `synth eval [--model M] [--suite FILE] [--out DIR] [--engine E] [--limit N] [--base-url U]`
    run a suite: the group's callback, invoked without a sub-command too (it replaces the group's plain
    callback; `synth eval math|factuality ...` are untouched)."""

    @eval_app.callback(invoke_without_command=True, help=HELP)
    def eval_suite(
        ctx: typer.Context,
        model: Annotated[
            str | None,
            typer.Option(help="Checkpoint path, hub id, or the served name (openai); 'embedded' or "
                         "unset: the suite's model, else the embedded SmolLM2-135M."),
        ] = None,
        suite: Annotated[
            Path, typer.Option(help="Suite YAML: model, engine and the checks with their options.")
        ] = SHIPPED_SUITE,
        out: Annotated[
            Path | None,
            typer.Option(help="Output folder (metrics.json, EVAL.md, one folder per check); "
                         "default: runs/eval/<model>."),
        ] = None,
        engine: Annotated[
            str | None, typer.Option(help="Engine instead of the suite's: auto, hf, vllm or openai.")
        ] = None,
        limit: Annotated[
            int | None, typer.Option(min=1, help="Evaluate at most N items per check (a quick look).")
        ] = None,
        base_url: Annotated[
            str | None, typer.Option(help="OpenAI-compatible server (engine openai) instead of the suite's.")
        ] = None,
    ) -> None:  # fmt: skip
        if ctx.invoked_subcommand is not None:
            options = {"model": model, "out": out, "engine": engine, "limit": limit, "base-url": base_url}
            given = [f"--{k}" for k, v in options.items() if v is not None]
            if suite != SHIPPED_SUITE:
                given.append("--suite")
            if given:
                sub, one = ctx.invoked_subcommand, len(given) == 1
                _fail(f"{', '.join(given)} before '{sub}' {'is an option' if one else 'are options'} of the "
                      f"suite run, not of `synth eval {sub}`: write {'it' if one else 'them'} after "
                      f"'{sub}' (synth eval {sub} --help)")  # fmt: skip
            return
        run_eval_suite(model, suite, out, engine, limit, base_url)


# -- a round next to the previous one -------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def compare_md(previous: dict[str, Any] | None, current: dict[str, Any]) -> str:
    """A Markdown table of every metric of ``current`` (an ``OUT/metrics.json``: ``{check: {metric:
    value, "n": items}}``) with its value in ``previous`` (the previous round's; None: the first round)
    and the change (current minus previous). Metrics only one side has show '-' on the other."""
    previous = previous or {}
    lines = ["| check | metric | previous | current | change | n |", "|---|---|---:|---:|---:|---:|"]
    checks = list(current) + [c for c in previous if c not in current]
    for check in checks:
        now, before = current.get(check) or {}, previous.get(check) or {}
        metrics = [m for m in now if m != "n"] + [m for m in before if m != "n" and m not in now]
        n_now, n_before = now.get("n"), before.get("n")
        n = "-" if n_now is None else str(n_now)
        if n_before is not None and n_now is not None and n_before != n_now:
            n += f" (was {n_before})"
        for metric in metrics:
            a, b = before.get(metric), now.get(metric)
            numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
            change = f"{b - a:+.4f}" if numbers else "-"  # type: ignore[operator]
            lines.append(f"| {check} | {metric} | {'-' if a is None else _fmt(a)} | "
                         f"{'-' if b is None else _fmt(b)} | {change} | {n} |")  # fmt: skip
    return "\n".join(lines) + "\n"
