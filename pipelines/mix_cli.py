"""`synth mix --config mix.yaml --out DIR`: the mix recipe (``synth.recipes.mix``: decontamination,
quality, difficulty, dedup, proportions) over runs or exports of several recipes, run in ``DIR``
(resumable), then exported to ``DIR/dataset`` with a card that shows the mix asked and achieved."""

from __future__ import annotations

from pathlib import Path

import click


def mix_command() -> click.Command:
    from synth.config import command
    from synth.recipe import get_recipe
    from synth.recipes.mix import MixConfig

    return command(MixConfig, "mix", _mix, get_recipe("mix").doc)


def _mix(cfg) -> None:
    from rich.console import Console

    from pipelines.cli import _fail, _run_recipe
    from synth.export.mix_card import export_mix

    _run_recipe("mix", cfg)
    out = Path(cfg.out) / "dataset"
    try:
        report = export_mix(Path(cfg.out), out, overwrite=True)
    except (ValueError, OSError) as e:
        _fail(f"{cfg.out}: cannot export the mix: {e}")
    shares = ", ".join(
        f"{c['capability']} {100 * c['achieved']:.1f}% (asked {100 * c['asked']:.1f}%)"
        for c in report["capabilities"]
        if c["asked"] or c["rows"]
    )
    Console(stderr=True).print(f"mixed {report['total']} SFT rows into {out}: {shares}")
