"""The typer command for the Llama 3 loop's weight averaging: ``synth average``.

A plain function, mounted by the main CLI with ``app.command()(average)``; heavy imports happen
inside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
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
    allow_nan: Annotated[
        bool,
        typer.Option(
            "--allow-nan", help="Average checkpoints that hold NaN/inf weights (refused by default)."
        ),
    ] = False,
) -> None:
    """Average model weights (uniform or weighted) into a new checkpoint; config/tokenizer from the first."""
    from train.average import AverageError, average_checkpoints, normalized, parse_weights

    try:
        w = normalized(parse_weights(weights, len(checkpoints)), len(checkpoints))
        path = average_checkpoints(checkpoints, out, w, allow_nan=allow_nan)
    except AverageError as e:
        _fail(str(e))
    shown = ", ".join(f"{c} x {x:.4g}" for c, x in zip(checkpoints, w, strict=True))
    console.print(f"averaged {shown} -> {path}")
