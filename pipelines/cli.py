"""The `synth` command line: run generators, inspect runs, export, sandbox, train."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(
    help="Synthetic post-training data after the Llama 3 recipe: generate, filter, export, train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
run_app = typer.Typer(help="Run a generator pipeline into a run directory (resumable).", no_args_is_help=True)
app.add_typer(run_app, name="run")
console = Console(stderr=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _fail(msg: str) -> None:
    # plain text, unwrapped: the message names file:line: field and must stay greppable
    console.print(Text.assemble(("error: ", "bold red"), msg), soft_wrap=True)
    raise typer.Exit(2)


Engine = Annotated[str, typer.Option(help="hf (transformers), vllm (offline, GPU) or openai (any server).")]
Model = Annotated[
    str | None,
    typer.Option(help="Model path or hub id; default: the embedded SmolLM2-135M-Instruct."),
]
BaseUrl = Annotated[str | None, typer.Option(help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")]


@run_app.command("general")
def run_general_cmd(
    seeds: Annotated[Path, typer.Option(help="JSONL of prompts: {'prompt': ...} or {'messages': [...]}.")],
    out: Annotated[Path, typer.Option(help="Run directory; the same command resumes a stopped run.")],
    engine: Engine = "hf",
    model: Model = None,
    base_url: BaseUrl = None,
    k: Annotated[int, typer.Option(help="Responses sampled per prompt (Llama 3 uses 10-30).")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Max new tokens per response.")] = 256,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per committed batch.")] = 8,
    top_fraction: Annotated[
        float, typer.Option(help="Keep prompts whose best score is in this top fraction.")
    ] = 0.25,
    skip_invalid: Annotated[
        bool, typer.Option(help="Quarantine malformed seed rows instead of stopping.")
    ] = False,
) -> None:
    """Seed prompts -> K responses -> rule cleaning -> LLM judge -> best of K -> top quartile."""
    from synth.engines.base import EngineError
    from synth.generators.general import GeneralConfig, run_general
    from synth.io import InputError

    _quiet_libraries()
    cfg = GeneralConfig(
        seeds=str(seeds),
        out=str(out),
        engine=engine,
        model=model,
        base_url=base_url,
        k=k,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        top_fraction=top_fraction,
        skip_invalid=skip_invalid,
    )
    try:
        run = run_general(cfg)
    except (InputError, EngineError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    _print_funnel(run.store)
    run.close()


@run_app.command("code")
def run_code_cmd(
    out: Annotated[Path, typer.Option(help="Run directory; the same command resumes a stopped run.")],
    corpus: Annotated[
        Path | None,
        typer.Option(help="Folder of .py files that inspire problems; default: the shipped corpus."),
    ] = None,
    engine: Engine = "hf",
    model: Model = None,
    base_url: BaseUrl = None,
    k: Annotated[int, typer.Option(help="Solutions sampled per problem.")] = 2,
    problems_per_snippet: Annotated[int, typer.Option(help="Problems written per corpus file.")] = 2,
    max_tokens: Annotated[int, typer.Option(help="Max new tokens per model call.")] = 384,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(help="Items per committed batch.")] = 8,
    repair_rounds: Annotated[
        int, typer.Option(help="Rounds of feedback (lint, traceback, failing assert) and repair.")
    ] = 2,
    languages: Annotated[
        str, typer.Option(help="Comma-separated translation targets (javascript, php); '' for none.")
    ] = "javascript,php",
    backend: Annotated[str, typer.Option(help="Sandbox backend: local (bubblewrap) or docker.")] = "local",
    unsafe_no_isolation: Annotated[
        bool, typer.Option(help="Run generated code without isolation (local backend; trusted hosts only).")
    ] = False,
    bt_threshold: Annotated[
        float, typer.Option(help="Keep documentation whose backtranslation scores at least this (1-10).")
    ] = 7.0,
) -> None:
    """Snippets -> problems -> K solutions -> ruff + unit tests in the sandbox -> repair rounds; plus
    backtranslated documentation and translations to other languages checked by execution."""
    from sandboxes.base import SandboxUnavailable
    from synth.engines.base import EngineError
    from synth.generators.code import DEFAULT_CORPUS, CodeConfig, run_code

    _quiet_libraries()
    try:
        cfg = CodeConfig(
            out=str(out),
            corpus=str(corpus or DEFAULT_CORPUS),
            engine=engine,
            model=model,
            base_url=base_url,
            k=k,
            problems_per_snippet=problems_per_snippet,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            repair_rounds=repair_rounds,
            languages=[x.strip() for x in languages.split(",") if x.strip()],
            backend=backend,
            unsafe_no_isolation=unsafe_no_isolation,
            bt_threshold=bt_threshold,
        )
        run = run_code(cfg)
    except (EngineError, SandboxUnavailable, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    _print_funnel(run.store)
    outcomes = run.store.get_meta("outcomes", {})
    Console().print(
        "solutions: "
        + (", ".join(f"{name}: {n}" for name, n in outcomes.items()) or "none reached execution")
    )
    run.close()


@app.command()
def stats(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of the funnel and scores.")] = None,
) -> None:
    """The funnel (rows in and out per stage, with reasons) and score distributions."""
    from synth.stats import histogram, plot_scores, score_values, summarize
    from synth.store import Store

    try:
        store = Store(run_dir, read_only=True)
    except FileNotFoundError as e:
        _fail(str(e))
    values = score_values(store)  # every row of every stage: read once
    summary = summarize(store, values)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_funnel(store, summary)
        out = Console()
        for name, vs in sorted(values.items()):
            s = summary["score_stats"][name]
            t = Table(
                title=f"score '{name}': n={s['n']} min={s['min']:g} median={s['median']:g} "
                f"mean={s['mean']:g} max={s['max']:g}"
            )
            t.add_column("bin")
            t.add_column("count", justify="right")
            t.add_column("")
            for label, count, bar in histogram(vs):
                t.add_row(label, str(count), bar)
            out.print(t)
        if summary["quarantine"]:
            t = Table(title="quarantined input rows")
            for c in ("source", "line", "field", "error"):
                t.add_column(c)
            for q in summary["quarantine"]:
                t.add_row(q["source"], str(q["line"]), q["field"], q["error"])
            out.print(t)
        out.print(
            f"final rows: sft={summary['rows']['sft']} preference={summary['rows']['preference']}; "
            f"engine cache entries: {summary['engine_cache_entries']}"
        )
    if plot:
        plot_scores(store, str(plot), values)
        console.print(f"wrote {plot}")
    store.close()


def _print_funnel(store, summary=None) -> None:
    from synth.stats import summarize

    summary = summary or summarize(store)
    t = Table(title=f"funnel: {store.run_dir}")
    for c in ("stage", "rows in", "kept", "rejected", "reasons"):
        t.add_column(c, justify="right" if c in ("rows in", "kept", "rejected") else "left")
    for f in summary["funnel"]:
        reasons = ", ".join(f"{r}: {n}" for r, n in f["reasons"].items())
        t.add_row(
            f["stage"] + ("" if f["done"] else " (unfinished)"),
            "" if f["rows_in"] is None else str(f["rows_in"]),
            "" if f["kept"] is None else str(f["kept"]),
            str(f["rejected"]),
            reasons,
        )
    Console().print(t)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    to: Annotated[Path, typer.Option(help="Output folder for the Hugging Face dataset (parquet + card).")],
    hub: Annotated[
        str | None, typer.Option(help="Also upload to this Hub dataset repo (token: HF_TOKEN).")
    ] = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    license: str = "apache-2.0",
    private: bool = False,
) -> None:
    """Write the run's SFT and preference rows as a HF dataset with a data card."""
    from synth.export import export_dataset, push_to_hub
    from synth.stats import output_records, summarize
    from synth.store import Store

    try:
        store = Store(run_dir, read_only=True)
    except FileNotFoundError as e:
        _fail(str(e))
    if not store.get_meta("outputs"):
        _fail(f"{run_dir} has no finished generator output to export")
    sft, pref = output_records(store)
    summary = summarize(store)
    summary["license"] = license
    store.close()
    path = export_dataset(sft, pref, to, summary, test_fraction=test_fraction, seed=seed)
    console.print(f"exported {len(sft)} sft and {len(pref)} preference rows to {path}")
    if hub:
        try:
            url = push_to_hub(path, hub, private=private)
        except Exception as e:  # the hub client raises many types; the message is what matters
            _fail(f"upload to {hub} failed: {e}")
        console.print(f"uploaded to {url}")


@app.command("round")
def round_cmd(
    config: Annotated[Path, typer.Option(help="Round YAML (see pipelines/configs/round_demo.yaml).")],
    rounds: Annotated[int | None, typer.Option(help="Rounds to run (overrides the config).")] = None,
    out: Annotated[Path | None, typer.Option(help="Round directory (overrides the config).")] = None,
) -> None:
    """One or more Llama-3-style rounds: generate, RM, rejection sampling, SFT, DPO, average.

    Each round generates with the previous round's model; a stopped round resumes step by step.
    """
    from pipelines.round import RoundConfig, run_rounds

    _quiet_libraries()
    try:
        cfg = RoundConfig.from_yaml(config, rounds=rounds, out=str(out) if out else None)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    models = run_rounds(cfg)
    console.print(f"round models: {', '.join(map(str, models))}")


def _mount_subcommands() -> None:
    """Sub-commands that live with their packages."""
    from sandboxes.cli import app as sandbox_app

    app.add_typer(sandbox_app, name="sandbox", help="Run untrusted code in an isolated sandbox.")
    from train.cli import app as train_app
    from train.tools_cli import average, sample

    app.add_typer(train_app, name="train", help="Train a reward model, SFT or DPO policy on exported data.")

    app.command(help=average.__doc__)(average)
    app.command(help=sample.__doc__)(sample)


_mount_subcommands()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
