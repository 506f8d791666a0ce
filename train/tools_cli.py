"""Typer commands for the Llama 3 loop's glue: ``synth average`` and ``synth sample`` (the
``rejection-sampling`` recipe under its own command line).

Plain functions, mounted by the main CLI with ``app.command()(average)`` and
``app.command()(sample)``; heavy imports happen inside them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)


def _fail(msg: str) -> None:
    console.print(Text.assemble(("error: ", "bold red"), msg), soft_wrap=True)
    raise typer.Exit(2)


def average(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="Checkpoint folders (safetensors, one architecture), two or more.")
    ],
    out: Annotated[Path, typer.Option("--out", help="New folder for the averaged checkpoint.")],
    weights: Annotated[
        str | None,
        typer.Option(help="Comma-separated weights, one per checkpoint (e.g. 0.5,0.3,0.2); default uniform."),
    ] = None,
) -> None:
    """Average model weights (uniform or weighted) into a new checkpoint; config/tokenizer from the first."""
    from train.average import AverageError, average_checkpoints, normalized, parse_weights

    try:
        w = normalized(parse_weights(weights, len(checkpoints)), len(checkpoints))
        path = average_checkpoints(checkpoints, out, w)
    except AverageError as e:
        _fail(str(e))
    shown = ", ".join(f"{c} x {x:.4g}" for c, x in zip(checkpoints, w, strict=True))
    console.print(f"averaged {shown} -> {path}")


def sample(
    prompts: Annotated[
        Path,
        typer.Option(
            help="JSONL of prompts ({'prompt': ...} / {'messages': [...]}), an exported dataset or a run."
        ),
    ],
    reward_model: Annotated[Path, typer.Option(help="Reward model folder (from `synth train rm`).")],
    out: Annotated[Path, typer.Option(help="Run directory; the same command resumes a stopped run.")],
    policy: Annotated[
        str | None,
        typer.Option(help="Policy: model path, hub id or served name; default: the embedded model."),
    ] = None,
    k: Annotated[int, typer.Option(help="Samples per prompt (Llama 3: 10-30).")] = 10,
    engine: Annotated[str, typer.Option(help="hf, vllm or openai.")] = "hf",
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server for --engine openai.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Max new tokens per sample.")] = 256,
    temperature: float = 0.8,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per committed batch.")] = 8,
    top_fraction: Annotated[
        float | None, typer.Option(help="Keep only prompts whose best reward is in this top fraction.")
    ] = None,
    keep_best_across_rounds: Annotated[
        Path | None,
        typer.Option(
            help="Previous rounds' best rows (exported dataset, run dir or JSONL): keep the better."
        ),
    ] = None,
    round_number: Annotated[int, typer.Option("--round", help="Round number recorded in provenance.")] = 0,
    rm_batch_size: Annotated[int, typer.Option(help="Sequences per reward-model forward pass.")] = 8,
    rm_max_length: Annotated[
        int, typer.Option(help="Tokens per scored sequence (as in RM training).")
    ] = 1024,
    skip_invalid: Annotated[bool, typer.Option(help="Quarantine malformed prompt rows.")] = False,
) -> None:
    """Rejection sampling: K samples per prompt from the policy, the reward model's best kept."""
    from synth.engines.base import EngineError
    from synth.io import InputError
    from synth.recipes.rejection_sampling import SampleConfig, run_sample

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    try:
        cfg = SampleConfig(
            prompts=str(prompts),
            reward_model=str(reward_model),
            out=str(out),
            model=policy,
            engine=engine,
            base_url=base_url,
            k=k,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            top_fraction=top_fraction,
            keep_best_across_rounds=str(keep_best_across_rounds) if keep_best_across_rounds else None,
            round=round_number,
            rm_batch_size=rm_batch_size,
            rm_max_length=rm_max_length,
            skip_invalid=skip_invalid,
        )
        run = run_sample(cfg)
    except (InputError, EngineError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    table = Table(title=f"funnel: {run.dir}")
    for c in ("stage", "rows in", "kept", "rejected", "reasons"):
        table.add_column(c)
    for f in run.store.funnel():
        reasons = ", ".join(f"{r}: {n}" for r, n in f["reasons"].items())
        table.add_row(f["stage"], str(f["rows_in"]), str(f["kept"]), str(f["rejected"]), reasons)
    Console().print(table)
    stages = ", ".join(run.store.get_meta("outputs")["sft"])
    console.print(f"done: sft rows in stage '{stages}'; export with `synth export {run.dir} --to DIR`")
    run.close()
