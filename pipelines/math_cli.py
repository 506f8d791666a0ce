"""`synth grade math FILE` and `synth eval math --model M --data FILE`: the math recipe's grader and
evaluation as commands, for any model's outputs or checkpoints."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import click
import typer

grade_app = typer.Typer(help="Grade model outputs against gold answers.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a checkpoint on held-out problems.", no_args_is_help=True)
CHUNK = 2000  # rows graded (and printed) at a time: a file of any size streams
HELDOUT = Path(__file__).resolve().parent / "data" / "math" / "heldout.jsonl"


@grade_app.callback()
def _grade() -> None:
    """Grade model outputs against gold answers."""


@eval_app.callback()
def _eval() -> None:
    """Evaluate a checkpoint on held-out problems."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _grade_rows(path: Path, skip_invalid: bool, bad: list[Any]) -> Iterator[dict[str, Any]]:
    from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, StrictStr

    from synth.io import iter_records

    class Row(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)
        id: StrictStr | StrictInt
        answer: StrictStr | StrictInt | StrictFloat
        solution: StrictStr

    def parse(data: Any) -> Any:
        if not isinstance(data, dict):
            raise TypeError(f"row must be a JSON object, got {type(data).__name__}")
        return Row.model_validate(data)

    for row in iter_records(path, parse, skip_invalid=skip_invalid, on_bad=bad.append):
        yield {"id": row.id, "answer": str(row.answer), "solution": row.solution}


@grade_app.command("math")
def grade_math(
    file: Annotated[Path, typer.Argument(help='JSONL of {"id", "answer", "solution"} rows.')],
    workers: Annotated[int, typer.Option(min=1, help="Grading processes.")] = 2,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="math-verify's limit per parse and comparison, seconds.")
    ] = 5.0,
    skip_invalid: Annotated[
        bool, typer.Option(help="Skip malformed rows (counted) instead of stopping.")
    ] = False,
) -> None:
    """Grade each row's solution against its gold answer: one JSON line per row on stdout,
    {"id", "correct", "extracted"}, in input order; a summary (accuracy, rows with no answer found,
    time-outs) on stderr.

    The final answer is found as \\boxed{...}, "#### ...", "The answer is ...", "A: ..." or, failing
    those, the last number; it is compared with math-verify after normalisation, each comparison in
    a worker process under its own timeout."""
    from synth.io import InputError
    from synth.stages.math.grading import GraderPool

    started = time.monotonic()
    counts = {"rows": 0, "correct": 0, "no_answer": 0, "timeout": 0}
    bad: list[Any] = []
    rows = _grade_rows(file, skip_invalid, bad)
    try:
        with GraderPool(workers=workers, timeout=timeout) as pool:
            while True:
                chunk = [r for _, r in zip(range(CHUNK), rows, strict=False)]
                if not chunk:
                    break
                grades = pool.grade([(r["solution"], r["answer"]) for r in chunk])
                lines = []
                for r, g in zip(chunk, grades, strict=True):
                    counts["rows"] += 1
                    counts["correct"] += g.correct
                    counts["no_answer"] += g.reason == "no_answer"
                    counts["timeout"] += g.reason == "timeout"
                    lines.append(json.dumps({"id": r["id"], "correct": g.correct, "extracted": g.extracted}))
                sys.stdout.write("\n".join(lines) + "\n")
                sys.stdout.flush()
    except (InputError, FileNotFoundError) as e:
        _fail(str(e))
    seconds = time.monotonic() - started
    n = counts["rows"]
    summary = {
        **counts,
        "accuracy": round(counts["correct"] / n, 4) if n else 0.0,
        "invalid_rows": len(bad),
        "seconds": round(seconds, 2),
        "rows_per_s": round(n / seconds, 1) if seconds else 0.0,
    }
    typer.echo(json.dumps(summary), err=True)


# -- synth eval math ------------------------------------------------------------------------------
def _eval_config() -> type:
    from synth.config import Config, option

    @dataclass(kw_only=True)
    class MathEvalConfig(Config):
        model: str | None = option(
            None, "Checkpoint path or hub id (served name for openai); default: embedded."
        )
        data: str = option(str(HELDOUT), "JSONL of held-out problems {'id', 'problem', 'answer'}.")
        engine: str = option("hf", "hf, vllm or openai.", choices=("hf", "vllm", "openai"))
        base_url: str | None = option(None, "OpenAI-compatible server (engine openai).")
        k: int = option(4, "Samples per problem for pass@k and maj@k (0: greedy only).", min=0)
        temperature: float = option(0.7, "Sampling temperature of the k samples.", min=0.0)
        top_p: float = option(0.95, "Nucleus mass of the k samples.", gt=0.0, max=1.0)
        max_tokens: int = option(384, "Max new tokens per solution.", min=1)
        seed: int = option(0, "Sampling seed.")
        limit: int = option(0, "Evaluate the first N problems only (0: all).", min=0)
        batch_size: int = option(16, "Problems per engine call.", min=1)
        workers: int = option(2, "Grading processes.", min=1)
        timeout: float = option(5.0, "math-verify's limit per parse and comparison, seconds.", min=1.0)
        out: str | None = option(None, "Also write the metrics (and per-problem results) to this JSON file.")
        engine_kwargs: dict[str, Any] = option(default_factory=dict, help="Engine options (YAML mapping).")

    return MathEvalConfig


def _run_eval(cfg: Any) -> None:
    from synth.engines import get_engine
    from synth.engines.base import EngineError
    from synth.io import InputError
    from synth.stages.math.evaluate import evaluate_math
    from synth.stages.math.problems import read_problems

    _quiet()
    try:
        rows = list(read_problems(cfg.data, limit=cfg.limit or None))
        kwargs = dict(cfg.engine_kwargs)
        if cfg.engine == "openai":
            kwargs["base_url"] = cfg.base_url
        engine = get_engine(cfg.engine, cfg.model, **kwargs)
        sampling = dict(
            temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed
        )
        grading = dict(workers=cfg.workers, timeout=cfg.timeout, per_problem=bool(cfg.out))
        result = evaluate_math(engine, rows, cfg.k, **sampling, **grading, batch_size=cfg.batch_size)
    except (InputError, EngineError, FileNotFoundError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    result["data"] = cfg.data
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps({**result, "config": asdict(cfg)}, indent=2, default=str))
    result.pop("per_problem", None)
    print(json.dumps(result))


def _quiet() -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def eval_command() -> click.Command:
    from synth.config import command

    return command(
        _eval_config(),
        "math",
        _run_eval,
        "Accuracy of a checkpoint on held-out math problems: greedy accuracy, pass@1, pass@k and "
        "maj@k (the most common answer), graded as `synth grade math` grades. Prints one JSON object.",
    )


@eval_app.command(
    "math",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    help="Accuracy (greedy, pass@k, maj@k) of a checkpoint on held-out math problems. "
    "`synth eval math --help` lists its options.",
)
def eval_math(ctx: typer.Context) -> None:
    eval_command().main(args=ctx.args, prog_name="synth eval math", standalone_mode=False)
