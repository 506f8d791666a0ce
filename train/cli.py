"""``synth train rm|sft|dpo``: train on a dataset ``synth export`` wrote.

Each command validates the data before loading the model, logs to TensorBoard under
``<out>/runs`` (``tensorboard --logdir <out>/runs``), and saves the final model (safetensors) and
tokenizer to ``--out``. Options come from :mod:`train.options` (one dataclass per command); each
command also reads them from ``--config FILE.yaml`` (keys with ``_``) and ``--set key=value``, in
that order of precedence: defaults < YAML < options < ``--set``. Multi-GPU: ``accelerate launch -m
train.cli sft ... --deepspeed train/configs/zero2.json`` (zero3.json for models that do not fit;
DPO's reference pass needs the unsharded model, so use ZeRO-2 for DPO).
"""

from __future__ import annotations

import click

from synth.config import command
from train.options import OPTIONS, TrainOptions

# torch, transformers and datasets load inside the commands: `synth --help` stays fast


def _train(options: TrainOptions) -> None:
    from train.data import DatasetError

    try:
        options.run()
    except DatasetError as err:
        click.secho(f"error: {err}", fg="red", err=True)
        raise click.exceptions.Exit(2) from err
    click.echo(f"saved to {options.out}")


group = click.Group("train", help="Train a reward model, SFT or DPO policy on exported synth data.")
for _kind, _cls in OPTIONS.items():
    group.add_command(command(_cls, _kind, _train, (_cls.__doc__ or "").strip()))

train_group = group
app = group  # the name importers of the former typer app use

if __name__ == "__main__":
    group()
