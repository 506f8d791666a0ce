"""``synth train rm|sft|dpo``: train on a dataset ``synth export`` wrote.

Each command validates the data before loading the model, logs to TensorBoard under
``<out>/runs`` (``tensorboard --logdir <out>/runs``), and saves the final model (safetensors) and
tokenizer to ``--out``. Options come from :mod:`train.options` (one dataclass per command); each
command also reads them from ``--config FILE.yaml`` (keys with ``_``) and ``--set key=value``, in
that order of precedence: defaults < YAML < options < ``--set``. Bad options, data or model paths
stop with one line, ``error: ...``, and exit status 2 before any weights load. Multi-GPU:
``accelerate launch -m train.cli sft ... --deepspeed train/configs/zero2.json`` (zero3.json for
models that do not fit; DPO's reference pass needs the unsharded model, so use ZeRO-2 for DPO).
"""

from __future__ import annotations

import functools

import click

from synth.config import command
from train.options import OPTIONS, TrainOptions

# torch, transformers and datasets load inside the commands: `synth --help` stays fast


class OneLineError(click.ClickException):
    """Shown as one line, ``error: <message>`` (no usage banner), exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.secho(f"error: {self.message}", fg="red", err=True, file=file)


def _one_line_usage_errors(cmd: click.Command) -> click.Command:
    """Bad option values (ranges, unknown keys, a missing --data) read ``error: ...`` on one line,
    like bad data and bad model paths."""
    callback = cmd.callback

    @functools.wraps(callback)
    def run(**kwargs):
        try:
            return callback(**kwargs)
        except click.UsageError as err:
            raise OneLineError(err.message) from None

    cmd.callback = run
    return cmd


def _train(options: TrainOptions) -> None:
    from train.common import ModelError
    from train.data import DatasetError

    try:
        options.run()
    except (DatasetError, ModelError) as err:
        raise OneLineError(" ".join(str(err).split())) from err
    click.echo(f"saved to {options.out}")


group = click.Group("train", help="Train a reward model, SFT or DPO policy on exported synth data.")
for _kind, _cls in OPTIONS.items():
    group.add_command(_one_line_usage_errors(command(_cls, _kind, _train, (_cls.__doc__ or "").strip())))

train_group = group
app = group  # the name importers of the former typer app use

if __name__ == "__main__":
    group()
