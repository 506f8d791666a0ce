"""The `synth` command line: run recipes, inspect runs, export, sandbox, train."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(
    help="Synthetic post-training data after the Llama 3 recipe: generate, filter, export, train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
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


# -- synth run: every registered recipe, its options generated from its config dataclass -------------
class RecipeGroup(click.Group):
    """``synth run NAME``: one sub-command per registered recipe (``synth run --list`` names them)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from synth.recipe import recipes

        return list(recipes())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from synth.config import command
        from synth.recipe import get_recipe

        try:
            spec = get_recipe(name)
        except KeyError:
            return None
        return command(
            spec.config, name, lambda cfg: _run_recipe(name, cfg), (spec.doc or spec.summary).strip()
        )


@click.group(
    "run",
    cls=RecipeGroup,
    invoke_without_command=True,
    help="Run a recipe into a run directory (resumable): synth run NAME [--config FILE.yaml] "
    "[--set key=value ...] [--option value ...]. `synth run NAME --help` lists its options.",
)
@click.option("--list", "show_list", is_flag=True, help="Name each recipe with one line.")
@click.pass_context
def run_group(ctx: click.Context, show_list: bool) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if not show_list:
        click.echo(ctx.get_help())
        return
    from synth.recipe import recipes

    for name, spec in recipes().items():
        click.echo(f"{name:<22} {spec.summary}")


def _run_recipe(name: str, cfg) -> None:
    from sandboxes.base import SandboxUnavailable
    from synth.engines.base import EngineError
    from synth.io import InputError
    from synth.recipe import run_recipe
    from synth.store import StoreError

    _quiet_libraries()
    try:
        run = run_recipe(name, cfg)
    except (InputError, EngineError, SandboxUnavailable, FileNotFoundError, ValueError, StoreError) as e:
        _fail(str(e))
    _print_funnel(run.store)
    outcomes = run.store.get_meta("outcomes")
    if outcomes:
        Console().print("outcomes: " + ", ".join(f"{k}: {n}" for k, n in outcomes.items()))
    run.close()


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    help="Rejection sampling: K samples per prompt from the policy, the reward model's best kept (the "
    "rejection-sampling recipe, with --policy for --model). `synth sample --help` lists its options.",
)
def sample(ctx: typer.Context) -> None:
    # the recipe's generated command, built only when `synth sample` runs: `synth --help` stays fast
    _sample_command().main(args=ctx.args, prog_name="synth sample", standalone_mode=False)


def _sample_command() -> click.Command:
    from dataclasses import dataclass

    from synth.config import command, option
    from synth.recipe import get_recipe
    from synth.recipes.rejection_sampling import NAME, SampleConfig

    @dataclass(kw_only=True)
    class SampleOptions(SampleConfig):
        model: str | None = option(
            None, "The policy that samples: model path, hub id or served name; default: the embedded model.",
            flag="--policy",
        )  # fmt: skip

    return command(SampleOptions, "sample", lambda cfg: _run_recipe(NAME, cfg), get_recipe(NAME).doc)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    help="The quality layer and the data mix over runs or exports of several recipes: decontamination, "
    "quality (RM top quartile or judge maximum), difficulty, dedup, proportions by capability; exported "
    "to OUT/dataset. `synth mix --help` lists its options.",
)
def mix(ctx: typer.Context) -> None:
    from pipelines.mix_cli import mix_command

    mix_command().main(args=ctx.args, prog_name="synth mix", standalone_mode=False)


@app.command()
def stats(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of the funnel and scores.")] = None,
) -> None:
    """The funnel (rows in and out per stage, with reasons) and score distributions; while a run is
    in progress, its funnel so far (the snapshot it writes after each committed batch)."""
    from synth.stats import histogram, plot_scores, score_tables, summarize
    from synth.store import RunBusy, Store

    try:
        store = Store(run_dir, read_only=True)
    except FileNotFoundError as e:
        _fail(str(e))
    except RunBusy as e:  # a run writes it: DuckDB admits no reader, its progress snapshot tells
        _print_progress(run_dir, e.pid, e.command, as_json)
        if plot:
            console.print(f"no plot while the run is in progress: {plot} not written")
        return
    scores = score_tables(store)  # aggregate queries: no row is loaded
    summary = summarize(store, scores)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_funnel(store, summary)
        out = Console()
        for name in sorted(scores):
            s = summary["score_stats"][name]
            t = Table(
                title=f"score '{name}': n={s['n']} min={s['min']:g} median={s['median']:g} "
                f"mean={s['mean']:g} max={s['max']:g}"
            )
            t.add_column("bin")
            t.add_column("count", justify="right")
            t.add_column("")
            for label, count, bar in histogram(scores[name]["bins"]):
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
        outcomes = store.get_meta("outcomes")  # a recipe's run in a line (e.g. the executable share)
        if outcomes:
            out.print("outcomes: " + ", ".join(f"{k}: {n}" for k, n in outcomes.items()))
    if plot:
        plot_scores(store, str(plot), scores)
        console.print(f"wrote {plot}")
    store.close()


def _print_progress(run_dir: Path, pid: int | None, command: str, as_json: bool) -> None:
    from synth.stats import read_progress

    snap = read_progress(run_dir) or {}
    live = snap.get("pid") == pid  # a snapshot from an earlier, stopped run is not this run's
    funnel = snap.get("funnel", []) if live else []
    if as_json:
        out = {"running": True, "pid": pid, "command": command, "funnel": funnel,
               "updated": snap.get("updated") if live else None,
               "quarantined": snap.get("quarantined", 0) if live else 0}  # fmt: skip
        print(json.dumps(out, indent=2))
        return
    import time

    when = (
        f"progress as of {time.strftime('%H:%M:%S', time.localtime(snap['updated']))}"
        if live
        else "no batch committed yet"
    )
    console.print(f"run in progress (pid {pid}: {command}); {when}", soft_wrap=True, markup=False)
    if funnel:
        _print_funnel(None, {"funnel": funnel}, title=f"funnel so far: {run_dir}")
    if live and snap.get("quarantined"):
        Console().print(f"quarantined input rows: {snap['quarantined']}")


def _print_funnel(store, summary=None, title: str | None = None) -> None:
    from synth.stats import summarize

    summary = summary or summarize(store)
    t = Table(title=title or f"funnel: {store.run_dir}")
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
    if summary.get("language_funnel"):
        _print_language_funnel(summary["language_funnel"])


def _print_language_funnel(rows: list[dict]) -> None:
    """Stages by language: kept / rows of that language (recipes that record each row's language)."""
    languages = sorted({r["language"] for r in rows})
    cells: dict[str, dict[str, str]] = {}
    for r in rows:
        cells.setdefault(r["stage"], {})[r["language"]] = f"{r['kept']}/{r['kept'] + r['rejected']}"
    t = Table(title="funnel per language (kept / rows)")
    t.add_column("stage")
    for lang in languages:
        t.add_column(lang, justify="right")
    for stage, by_lang in cells.items():
        t.add_row(stage, *(by_lang.get(lang, "") for lang in languages))
    Console().print(t)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    to: Annotated[Path, typer.Option(help="Output folder for the Hugging Face dataset (parquet + card).")],
    hub: Annotated[
        str | None, typer.Option(help="Also upload to this Hub dataset repo (token: HF_TOKEN).")
    ] = None,
    test_fraction: Annotated[
        float, typer.Option(help="Share of each config's rows in the test split. Range: [0, 1].")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
    license: Annotated[str, typer.Option(help="License in the data card's header (a Hub license id).")] = (
        "apache-2.0"
    ),
    private: Annotated[bool, typer.Option(help="With --hub: create the repo private.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Export into a non-empty folder that is not an earlier export of this run (its README.md "
            "and sft/, preference/ shards are replaced; other files stay)."
        ),
    ] = False,
) -> None:
    """Write the run's SFT and preference rows as a HF dataset with a data card.

    --to must be a new or empty folder, or an earlier export of the same run (re-exported in place).
    """
    from synth.export import check_target, export_dataset, push_to_hub, run_id_of
    from synth.stats import iter_outputs, summarize
    from synth.store import Store

    if not 0.0 <= test_fraction <= 1.0:  # also refuses nan
        _fail(f"--test-fraction must be in [0, 1], got {test_fraction}")
    run_id = run_id_of(run_dir)
    try:
        check_target(to, run_id, overwrite)
    except ValueError as e:
        _fail(f"--to {e}")
    try:
        store = Store(run_dir, read_only=True)
    except FileNotFoundError as e:
        _fail(str(e))
    if not store.get_meta("outputs"):
        _fail(f"{run_dir} has no finished recipe output to export")
    summary = summarize(store)
    try:  # rows stream from the store into parquet shards
        extra = {k: iter_outputs(store, k) for k in summary["rows"] if k not in ("sft", "preference")}
        path = export_dataset(iter_outputs(store, "sft"), iter_outputs(store, "preference"), to, summary,
                              test_fraction=test_fraction, seed=seed, license=license, run_id=run_id,
                              overwrite=overwrite, extra=extra)  # fmt: skip
    except (ValueError, OSError) as e:
        _fail(f"{run_dir}: cannot export: {e}")
    finally:
        store.close()
    rows = summary["rows"]
    more = "".join(f", {n} {k}" for k, n in rows.items() if k not in ("sft", "preference"))
    console.print(f"exported {rows['sft']} sft and {rows['preference']} preference rows{more} to {path}")
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
    from train.tools_cli import average

    app.command(help=average.__doc__)(average)
    from pipelines.math_cli import eval_app, grade_app

    app.add_typer(grade_app, name="grade", help="Grade model outputs against gold answers (math).")
    app.add_typer(eval_app, name="eval")  # its help: the suite's group callback (pipelines/eval_cli.py)
    from pipelines.factuality_cli import add_eval_factuality

    add_eval_factuality(eval_app)
    from pipelines.eval_cli import add_eval_suite

    add_eval_suite(eval_app)
    from pipelines.view_cli import view

    app.command(help=view.__doc__)(view)


_mount_subcommands()


def build_cli() -> click.Group:
    """The whole `synth` command: the typer commands plus the click groups generated from configs."""
    from train.cli import group as train_group

    cli = typer.main.get_command(app)
    cli.add_command(run_group, "run")
    cli.add_command(train_group, "train")
    return cli


cli = build_cli()


def main(args: list[str] | None = None) -> int:
    """Entry point. The typer commands run on typer's own copy of click, the generated groups on
    click itself: exits and usage errors of the latter are handled here, as click would."""
    try:
        code = cli.main(args=args, standalone_mode=False)  # typer returns its own exits' codes
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        console.print("aborted")
        return 1
    except Exception as e:  # typer's click copy raises its own exit/usage exceptions
        from synth.store import StoreError

        if isinstance(e, StoreError):  # a run directory busy or full, from any command: one line
            console.print(Text.assemble(("error: ", "bold red"), str(e)), soft_wrap=True)
            return 2
        code = getattr(e, "exit_code", None)
        if code is None:
            raise
        if hasattr(e, "show"):
            e.show()
        return code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
