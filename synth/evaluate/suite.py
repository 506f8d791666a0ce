"""The evaluation suite: every capability of a model measured on held-out data, the same way each round.

Llama 3 evaluates each round's model per capability (section 5: code, math, reasoning, tool use,
multilinguality, long context, factuality...) and keeps the best checkpoints by those numbers; the
post-training rounds are steered by them. ``synth eval --model M --suite SUITE.yaml`` does this for the
project: a suite YAML names the checks and their options,

    model: null              # or --model; null / "embedded": the embedded SmolLM2-135M
    engine: auto             # hf | vllm | openai (base_url:), as everywhere
    checks:
      math:         {limit: 10, max_tokens: 256}
      code:         {data: pipelines/data/heldout/code.jsonl, limit: 10}

and ``run_suite`` builds one engine for the model, runs each check on it in the order given, and writes
``OUT/<check>/metrics.json`` (the check's metrics and options) with ``OUT/<check>/results.jsonl`` (one
line per item: the reply and its verdict), ``OUT/metrics.json`` (each check's headline numbers and
``n``: the file a round compares with the previous round's) and ``OUT/EVAL.md`` (a table: check,
metric, value, n). The checks, one module each: ``math`` and ``factuality`` (the existing evaluators),
``code`` (pass@1, executed in the sandbox), ``tools`` (calls parsed and executed), ``language`` (reply
in the prompt's language) and ``long_context`` (QA over a document in the prompt).

Beyond the paper: the held-out sets are the project's own, small and hand-written
(``pipelines/data/heldout/``, see its README), and ``held_out_prompts(suite)`` hands every check's
prompts to the quality layer's decontamination, so no generated training row repeats them.

A check's data path, when relative, is found from the current directory, else from the project root
(the shipped suite's ``pipelines/...`` paths work from anywhere). Errors in a suite file are one line
naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synth.config import Config, ConfigError, build, option
from synth.engines import ENGINES
from synth.engines.base import Engine

PROJECT = Path(__file__).resolve().parents[2]
HELDOUT = PROJECT / "pipelines" / "data" / "heldout"
SHIPPED_SUITE = PROJECT / "pipelines" / "configs" / "eval_suite.yaml"
EMBEDDED = "embedded"


class SuiteError(ValueError):
    """A suite file that cannot be used (one line naming the file and the key)."""


# -- each check's options (a YAML mapping under checks.<name>) ----------------------------------------
@dataclass(kw_only=True)
class CheckOptions(Config):
    data: str = option("", "JSONL of held-out items.")
    limit: int = option(0, "Evaluate the first N items only (0: all).", min=0)


@dataclass(kw_only=True)
class MathOptions(CheckOptions):
    data: str = option(str(PROJECT / "pipelines" / "data" / "math" / "heldout.jsonl"), "Held-out problems.")
    k: int = option(0, "Samples per problem for pass@k and maj@k (0: greedy accuracy only).", min=0)
    max_tokens: int = option(256, "Max new tokens per solution.", min=1)
    temperature: float = option(0.7, "Sampling temperature of the k samples.", min=0.0)
    top_p: float = option(0.95, "Nucleus mass of the k samples.", gt=0.0, max=1.0)
    seed: int = option(0, "Sampling seed.")
    batch_size: int = option(16, "Problems per engine call.", min=1)
    workers: int = option(1, "Grading processes.", min=1)
    timeout: float = option(5.0, "math-verify's limit per comparison, seconds.", min=1.0)


@dataclass(kw_only=True)
class FactualityOptions(CheckOptions):
    data: str = option(
        str(PROJECT / "pipelines" / "data" / "factuality" / "probes.jsonl"), "Held-out probes."
    )
    max_tokens: int = option(64, "Max new tokens per reply.", min=1)
    batch_size: int = option(16, "Probes per engine call.", min=1)


@dataclass(kw_only=True)
class CodeOptions(CheckOptions):
    data: str = option(str(HELDOUT / "code.jsonl"), "Held-out function tasks with unit tests.")
    max_tokens: int = option(256, "Max new tokens per solution.", min=1)
    batch_size: int = option(16, "Tasks per engine call.", min=1)
    timeout: float = option(10.0, "Sandbox wall-clock limit per run, seconds.", gt=0.0)
    memory_mb: int = option(512, "Sandbox memory limit per run, MB.", min=16)
    backend: str = option("local", "Sandbox backend.", choices=("local", "docker"))
    workers: int | None = option(None, "Sandbox runs at once (default: the pool's).", min=1)


@dataclass(kw_only=True)
class ToolsOptions(CheckOptions):
    data: str = option(str(HELDOUT / "tools.jsonl"), "Held-out tool questions.")
    tools: list[str] = option(
        default_factory=lambda: ["python", "calculator", "search"], help="Tools offered."
    )
    corpus: str = option(
        str(HELDOUT / "tools_corpus"), "Folder of .md/.txt documents the search tool searches."
    )
    max_tokens: int = option(128, "Max new tokens of the model's turn.", min=1)
    batch_size: int = option(16, "Questions per engine call.", min=1)
    timeout: float = option(10.0, "Sandbox limit of a python call, seconds.", gt=0.0)
    backend: str = option("local", "Sandbox backend.", choices=("local", "docker"))
    search_k: int = option(1, "Passages a search returns.", min=1)


@dataclass(kw_only=True)
class LanguageOptions(CheckOptions):
    data: str = option(str(HELDOUT / "language.jsonl"), "Held-out prompts with their language.")
    max_tokens: int = option(96, "Max new tokens per reply.", min=1)
    batch_size: int = option(16, "Prompts per engine call.", min=1)
    backend: str = option("lingua", "Language detector.", choices=("lingua", "fasttext", "both"))
    min_chars: int = option(20, "Fewest letters a reply needs to be identified.", min=1)
    min_confidence: float = option(0.3, "Least detector confidence to name a language.", min=0.0, max=1.0)


@dataclass(kw_only=True)
class LongContextOptions(CheckOptions):
    data: str = option(str(HELDOUT / "long_context.jsonl"), "Held-out questions over documents.")
    max_tokens: int = option(48, "Max new tokens per answer.", min=1)
    batch_size: int = option(4, "Questions per engine call.", min=1)


@dataclass(frozen=True)
class CheckKind:
    """One kind of check: its options, and where (module ``synth.evaluate.<module>``) its rows are read
    (``reader(path, limit)``) and evaluated (``evaluator(engine, rows, **options, progress=...)``);
    imported only when a check of the kind runs."""

    name: str
    options: type[CheckOptions]
    module: str
    reader: str
    evaluator: str
    prompt: Callable[[Any], str]  # a row's held-out text (what decontamination must keep out of training)
    headline: Callable[[dict[str, Any]], list[str]]  # the metrics metrics.json and EVAL.md show

    def _function(self, name: str) -> Callable[..., Any]:
        import importlib

        return getattr(importlib.import_module(f"synth.evaluate.{self.module}"), name)

    def read(self, path: str | Path, limit: int | None = None) -> list[Any]:
        return list(self._function(self.reader)(path, limit))

    def evaluate(self, engine: Engine, rows: list[Any], **options: Any) -> dict[str, Any]:
        return self._function(self.evaluator)(engine, rows, **options)


def _keys(*names: str) -> Callable[[dict[str, Any]], list[str]]:
    return lambda result: [k for k in names if k in result]


def _math_headline(result: dict[str, Any]) -> list[str]:
    return ["accuracy", *(k for k in result if k.startswith(("pass@", "maj@")))]


CHECKS: dict[str, CheckKind] = {
    "math": CheckKind("math", MathOptions, "math", "read_problems", "evaluate_math",
                      lambda r: r.problem, _math_headline),
    "factuality": CheckKind("factuality", FactualityOptions, "factuality", "read_probes",
                            "evaluate_factuality", lambda r: r.question,
                            _keys("correct_rate", "refusal_rate", "over_refusal_rate", "wrong_answer_rate")),
    "code": CheckKind("code", CodeOptions, "code", "read_tasks", "evaluate_code", lambda r: r.prompt,
                      _keys("pass@1")),
    "tools": CheckKind("tools", ToolsOptions, "tools", "read_questions", "evaluate_tools",
                       lambda r: r.question, _keys("accuracy", "parse_rate", "execution_rate")),
    "language": CheckKind("language", LanguageOptions, "language", "read_prompts", "evaluate_language",
                          lambda r: r.prompt, _keys("match_rate", "abstain_rate")),
    "long_context": CheckKind("long_context", LongContextOptions, "long_context", "read_questions",
                              "evaluate_long_context", lambda r: f"{r.context}\n\n{r.question}",
                              _keys("accuracy")),
}  # fmt: skip
PATH_OPTIONS = ("data", "corpus")  # options that name files or folders, resolved as the module says


# -- the suite file -------------------------------------------------------------------------------------
@dataclass
class EvalSuite:
    """A suite: the model (None: the embedded one), the engine, and each check's options in order."""

    checks: dict[str, CheckOptions]
    model: str | None = None
    engine: str = "auto"
    base_url: str | None = None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "<suite>"

    @classmethod
    def from_yaml(cls, path: str | Path) -> EvalSuite:
        path = Path(path)
        if not path.is_file():
            raise SuiteError(f"suite file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise SuiteError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<suite>") -> EvalSuite:
        if not isinstance(data, dict):
            raise SuiteError(f"{source}: a suite is a mapping with a 'checks' key")
        known = ("model", "engine", "base_url", "engine_kwargs", "checks")
        for key in data:
            if key not in known:
                raise SuiteError(f"{source}: unknown key {key!r}; known: {', '.join(known)}")
        engine = data.get("engine") or "auto"
        if engine not in ENGINES:
            raise SuiteError(f"{source}: engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        engine_kwargs = data.get("engine_kwargs") or {}
        if not isinstance(engine_kwargs, dict):
            raise SuiteError(f"{source}: engine_kwargs must be a mapping of engine options")
        checks = data.get("checks")
        if not isinstance(checks, dict) or not checks:
            raise SuiteError(f"{source}: 'checks' must map at least one check to its options "
                             f"(checks: {', '.join(CHECKS)})")  # fmt: skip
        parsed = {str(name): _check_options(str(name), opts, source) for name, opts in checks.items()}
        model = data.get("model")
        return cls(checks=parsed, model=None if model is None else str(model), engine=str(engine),
                   base_url=data.get("base_url"), engine_kwargs=dict(engine_kwargs),
                   source=source)  # fmt: skip


def _check_options(name: str, opts: Any, source: str) -> CheckOptions:
    kind = CHECKS.get(name)
    if kind is None:
        raise SuiteError(f"{source}: checks: unknown check {name!r}; known: {', '.join(CHECKS)}")
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise SuiteError(f"{source}: checks.{name} must be a mapping of options ({{}} for the defaults)")
    names = [f.name for f in dataclasses.fields(kind.options)]
    for key in opts:
        if key not in names:
            raise SuiteError(f"{source}: checks.{name}: unknown key {key!r}; known: {', '.join(names)}")
    try:
        cfg = build(kind.options, opts, where=f"checks.{name}")
    except ConfigError as e:
        message = str(e)
        if not message.startswith(f"checks.{name}"):
            message = f"checks.{name}.{message}"
        raise SuiteError(f"{source}: {message}") from None
    for key in PATH_OPTIONS:
        if hasattr(cfg, key):
            resolved = resolve_path(getattr(cfg, key))
            if not resolved.exists():
                raise SuiteError(
                    f"{source}: checks.{name}.{key}: no such file or folder: {getattr(cfg, key)}"
                )
            setattr(cfg, key, str(resolved))
    return cfg


def resolve_path(path: str | Path) -> Path:
    """A relative path from the current directory when it exists there, else from the project root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (PROJECT / p).exists():
        return p
    return PROJECT / p


def read_check(name: str, opts: CheckOptions, limit: int | None = None) -> list[Any]:
    """The rows of one check (``limit``: the first N; default: the check's own ``limit``, 0 = all)."""
    if limit is None:
        limit = opts.limit or None
    return CHECKS[name].read(opts.data, limit or None)


def held_out_prompts(suite: EvalSuite | str | Path) -> dict[str, list[str]]:
    """Every held-out prompt of each check of the suite (all rows of its data, whatever its ``limit``):
    the texts the quality layer's decontamination keeps out of training mixes."""
    if not isinstance(suite, EvalSuite):
        suite = EvalSuite.from_yaml(suite)
    return {name: [CHECKS[name].prompt(r) for r in read_check(name, opts, limit=0)]
            for name, opts in suite.checks.items()}  # fmt: skip


# -- running it -----------------------------------------------------------------------------------------
def model_name(model: str | None) -> str:
    from synth.engines.embedded import EMBEDDED_NAME, is_embedded

    return EMBEDDED_NAME if is_embedded(model) else str(model)


def build_engine(suite: EvalSuite, model: str | None, engine: str | None = None) -> Engine:
    """The one engine of a suite run: ``engine`` (a name) or the suite's, for ``model``."""
    from synth.engines import get_engine
    from synth.engines.embedded import is_embedded

    return get_engine(engine or suite.engine, None if is_embedded(model) else model,
                      base_url=suite.base_url, **suite.engine_kwargs)  # fmt: skip


def run_suite(
    suite: EvalSuite,
    model: str | None,
    out_dir: str | Path,
    engine: Engine | str | None = None,
    *,
    limit: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every check of ``suite`` on ``model`` (None: the suite's, else the embedded model) with one
    engine (``engine``: an engine already built, used as it is, or an engine name instead of the
    suite's), write the files the module lists under ``out_dir``, and return the headline numbers:
    ``{check: {metric: value, ..., "n": items}}``. ``limit`` caps every check's items. All data is
    read, and the sandbox checked, before the model is loaded: a bad file stops the run at once."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from synth.stages.execute import Sandbox

    model = model if model is not None else suite.model
    rows = {}
    for name, opts in suite.checks.items():
        caps = [x for x in (opts.limit, limit) if x]
        rows[name] = read_check(name, opts, limit=min(caps) if caps else 0)
        if not rows[name]:
            raise ValueError(f"{suite.source}: checks.{name}: {opts.data} has no items")
    for name, opts in suite.checks.items():  # programs run isolated or not at all: say so before loading
        if name == "code" or (name == "tools" and "python" in opts.tools):  # type: ignore[attr-defined]
            Sandbox(backend=opts.backend).check()  # type: ignore[attr-defined]
    built = engine is None or isinstance(engine, str)
    llm: Engine = build_engine(suite, model, engine) if built else engine  # type: ignore[arg-type]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    headline: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True),
                   disable=os.environ.get("SYNTH_NO_PROGRESS") == "1")  # fmt: skip
    try:
        with bar:
            for name, opts in suite.checks.items():
                task = bar.add_task(f"eval {name}", total=len(rows[name]))
                started = time.monotonic()
                kwargs = {k: v for k, v in dataclasses.asdict(opts).items() if k not in ("data", "limit")}
                result = CHECKS[name].evaluate(llm, rows[name], **kwargs,
                                               progress=lambda k, t=task: bar.advance(t, k))  # fmt: skip
                seconds[name] = round(time.monotonic() - started, 1)
                headline[name] = {k: result[k] for k in CHECKS[name].headline(result)} | {"n": result["n"]}
                _write_check(out / name, name, opts, result, seconds[name])
    finally:
        if built and hasattr(llm, "close"):
            llm.close()
    about = {"model": model_name(model) if built else getattr(llm, "model", None) or model_name(model),
             "engine": getattr(llm, "name", str(engine or suite.engine)),
             "suite": suite.source, "seconds": seconds}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(headline, indent=2) + "\n", encoding="utf-8")
    (out / "run.json").write_text(json.dumps(about, indent=2) + "\n", encoding="utf-8")
    (out / "EVAL.md").write_text(eval_md(headline, **about), encoding="utf-8")
    return headline


def _write_check(where: Path, name: str, opts: CheckOptions, result: dict[str, Any], seconds: float) -> None:
    where.mkdir(parents=True, exist_ok=True)
    items = result.get("results", [])
    metrics = {k: v for k, v in result.items() if k != "results"}
    metrics.update(check=name, seconds=seconds, options=dataclasses.asdict(opts))
    (where / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n", encoding="utf-8")
    with open(where / "results.jsonl", "w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False, default=str) + "\n")


def fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def eval_md(
    headline: dict[str, dict[str, Any]],
    *,
    model: str = "",
    engine: str = "",
    suite: str = "",
    seconds: dict[str, float] | None = None,
) -> str:
    """EVAL.md: a table of check | metric | value | n, and what was evaluated."""
    seconds = seconds or {}
    lines = [f"# Evaluation of {model}" if model else "# Evaluation", ""]
    if engine or suite:
        lines += [f"Engine `{engine}`, suite `{suite}`; every item held out (greedy replies).", ""]
    lines += ["| check | metric | value | n |", "|---|---|---:|---:|"]
    for check, metrics in headline.items():
        for metric, value in metrics.items():
            if metric != "n":
                lines.append(f"| {check} | {metric} | {fmt(value)} | {metrics.get('n', '')} |")
    if seconds:
        lines += ["", "Time per check: " + ", ".join(f"{k} {v:g} s" for k, v in seconds.items()) + "."]
    return "\n".join(lines) + "\n"
