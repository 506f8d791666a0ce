"""``synth train rm|sft|dpo``: train on a dataset ``synth export`` wrote.

Each command validates the data before loading the model, logs to TensorBoard under
``<out>/runs`` (``tensorboard --logdir <out>/runs``), and saves the final model (safetensors) and
tokenizer to ``--out``. Multi-GPU: ``accelerate launch -m train.cli sft ... --deepspeed
train/configs/zero2.json`` (zero3.json for models that do not fit; DPO's reference pass needs the
unsharded model, so use ZeRO-2 for DPO).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# torch, transformers and datasets load inside the commands: `synth --help` stays fast

app = typer.Typer(help="Train a reward model, SFT or DPO policy on exported synth data.")

Data = Annotated[Path, typer.Option("--data", help="Exported dataset folder, or .jsonl/.parquet.")]
Out = Annotated[Path, typer.Option("--out", help="Output folder: model, tokenizer, metrics, runs.")]
Model = Annotated[str, typer.Option(help="Base model: local path, hub name or 'embedded'.")]
Epochs = Annotated[float, typer.Option(help="Training epochs.")]
Lr = Annotated[float, typer.Option("--lr", help="Peak learning rate.")]
Batch = Annotated[int, typer.Option(help="Rows per device per step.")]
GradAccum = Annotated[int, typer.Option(help="Gradient accumulation steps.")]
MaxLen = Annotated[int, typer.Option(help="Tokens per sequence.")]
MaxSteps = Annotated[int, typer.Option(help="Stop after this many steps (-1: run the epochs).")]
Ckpt = Annotated[bool, typer.Option(help="Activation checkpointing (saves GPU memory).")]
DeepSpeed = Annotated[Path | None, typer.Option(help="DeepSpeed JSON, e.g. train/configs/zero2.json")]
LogSteps = Annotated[int, typer.Option(help="Log every N steps.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]


def _common(out, epochs, lr, batch_size, grad_accum, max_length, max_steps, ckpt, ds, log, seed):
    return {
        "output_dir": str(out),
        "num_train_epochs": epochs,
        "learning_rate": lr,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "max_length": max_length,
        "max_steps": max_steps,
        "activation_checkpointing": ckpt,
        "deepspeed": str(ds) if ds else None,
        "logging_steps": log,
        "seed": seed,
    }


def _run(kind: str, data: Path, model: str, common: dict, **extra) -> None:
    from train import run_recipe
    from train.data import DatasetError

    try:
        run_recipe(kind, str(data), model, **common, **extra)
    except DatasetError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from err
    typer.echo(f"saved to {common['output_dir']}")


@app.command()
def rm(
    data: Data,
    out: Out,
    model: Model = "embedded",
    epochs: Epochs = 1.0,
    lr: Lr = 1e-5,
    batch_size: Batch = 4,
    grad_accum: GradAccum = 1,
    max_length: MaxLen = 1024,
    max_steps: MaxSteps = -1,
    margin: Annotated[bool, typer.Option(help="Llama 2 margin by preference strength.")] = True,
    concat: Annotated[bool, typer.Option(help="Llama 3: one row per prompt with all its responses.")] = False,
    keep_marginal: Annotated[bool, typer.Option(help="Also train on 'marginally_better' rows.")] = False,
    gradient_checkpointing: Ckpt = False,
    deepspeed: DeepSpeed = None,
    logging_steps: LogSteps = 10,
    seed: Seed = 42,
) -> None:
    """Reward model (Bradley-Terry + margin); reports held-out accuracy per strength."""
    common = _common(out, epochs, lr, batch_size, grad_accum, max_length, max_steps,
                     gradient_checkpointing, deepspeed, logging_steps, seed)  # fmt: skip
    drop = () if keep_marginal else ("marginally_better",)
    _run("rm", data, model, common, use_margin=margin, concat_responses=concat, drop_strengths=drop)


@app.command()
def sft(
    data: Data,
    out: Out,
    model: Model = "embedded",
    epochs: Epochs = 1.0,
    lr: Lr = 1e-5,
    batch_size: Batch = 4,
    grad_accum: GradAccum = 1,
    max_length: MaxLen = 1024,
    max_steps: MaxSteps = -1,
    gradient_checkpointing: Ckpt = False,
    deepspeed: DeepSpeed = None,
    logging_steps: LogSteps = 10,
    seed: Seed = 42,
) -> None:
    """Supervised fine-tuning on assistant turns, padding-free."""
    common = _common(out, epochs, lr, batch_size, grad_accum, max_length, max_steps,
                     gradient_checkpointing, deepspeed, logging_steps, seed)  # fmt: skip
    _run("sft", data, model, common)


@app.command()
def dpo(
    data: Data,
    out: Out,
    model: Model = "embedded",
    epochs: Epochs = 1.0,
    lr: Lr = 1e-5,
    batch_size: Batch = 4,
    grad_accum: GradAccum = 1,
    max_length: MaxLen = 1024,
    max_steps: MaxSteps = -1,
    beta: Annotated[float, typer.Option(help="DPO temperature.")] = 0.1,
    nll_weight: Annotated[float, typer.Option(help="Weight of the chosen NLL term.")] = 0.2,
    keep_marginal: Annotated[bool, typer.Option(help="Also train on 'marginally_better' rows.")] = False,
    gradient_checkpointing: Ckpt = False,
    deepspeed: DeepSpeed = None,
    logging_steps: LogSteps = 10,
    seed: Seed = 42,
) -> None:
    """DPO with masked formatting tokens, NLL regulariser and a cached reference."""
    common = _common(out, epochs, lr, batch_size, grad_accum, max_length, max_steps,
                     gradient_checkpointing, deepspeed, logging_steps, seed)  # fmt: skip
    drop = () if keep_marginal else ("marginally_better",)
    _run("dpo", data, model, common, beta=beta, nll_weight=nll_weight, drop_strengths=drop)


if __name__ == "__main__":
    app()
