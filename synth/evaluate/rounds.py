"""The evaluations of a `synth round` directory, round by round: each round's
``round_N/eval_<name>/metrics.json`` read as headline numbers (``{check: {metric: value}}``) and as one
series per metric over the rounds. ROUND.md / ROUNDS.md (``pipelines/round.py``) and `synth view`'s
Rounds tab are both drawn from here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def round_numbers(root: Path | str) -> list[int]:
    """The rounds a round directory holds (its ``round_N`` folders), in order."""
    return sorted(
        int(d.name.split("_")[1])
        for d in Path(root).glob("round_*")
        if d.is_dir() and d.name.split("_")[1].isdigit()
    )


def headlines(round_dir: Path, name: str) -> dict[str, Any] | None:
    """An evaluation's headline numbers ({check: {metric: value, n}}) from a round directory, or None
    when that round has none (math: its one check's numeric metrics)."""
    path = Path(round_dir) / f"eval_{name}" / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if name == "math":
        keep = {k: v for k, v in data.items() if _number(v)}
        return {"math": keep}
    return data


def metric_series(
    root: Path | str, rounds: list[int], names: list[str] | None = None
) -> dict[tuple[str, str, str], list[float | None]]:
    """{(evaluation, check, metric): [value of each round in ``rounds``, None where it has none]}
    over the evaluations ``names`` (every ``eval_*`` a round has, when None)."""
    root = Path(root)
    series: dict[tuple[str, str, str], list[float | None]] = {}
    for i, rnd in enumerate(rounds):
        here = root / f"round_{rnd}"
        if names is None:
            found = sorted(p.name.removeprefix("eval_") for p in here.glob("eval_*"))
        else:
            found = names
        for name in found:
            for check, metrics in (headlines(here, name) or {}).items():
                if not isinstance(metrics, dict):
                    continue
                for metric, value in metrics.items():
                    if metric != "n" and _number(value):
                        series.setdefault((name, check, metric), [None] * len(rounds))[i] = float(value)
    return series


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
