"""The run's tools and how each call of one is checked and executed.

Core tools (Llama 3's, without the network): ``python`` (a program run in the sandbox, its stdout is
the result), ``calculator`` (SymPy, ``synth.stages.tools.calculator``) and ``search`` (BM25 over the
user's documents, ``synth.stages.tools.search``). User tools: every public function with a docstring
and type hints in a Python file (``--tools FILE.py``), its schema read from the signature and the
docstring (``synth.stages.tools.schema``); functions without are left out, with the reason, in run
meta ``tools_skipped``.

A user function runs in the sandbox, never in this process: the file is placed next to a small
harness that imports it, replays the trace's earlier calls of the file's functions (their output
silenced), then makes the call and prints its result as JSON. Replaying makes a stateful environment
(the shipped ``pipelines/data/tools/filesystem.py``: an in-memory file system) behave across the turns
of one trace as if it lived on, while every execution stays isolated and repeatable. The sandbox's
Python is the system's: a tools file may import the standard library only.

Every call is checked before it runs; the reasons the funnel counts: ``unknown_tool`` (no tool of that
name), ``schema_violation`` (arguments against the function's JSON schema: a missing or unknown
argument, a wrong type), then ``execution_error`` (the tool raised, the program exited non-zero, the
expression was refused), ``timeout``, ``sandbox_error`` (the sandbox itself failed).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxes import Job, Result, new_sentinel
from synth.stages.execute import Sandbox
from synth.stages.tools.calculator import Calculator
from synth.stages.tools.calls import Call
from synth.stages.tools.items import CallRecord, ToolSpec
from synth.stages.tools.schema import SchemaError, check_arguments, function_schema, tool_schema
from synth.stages.tools.search import SearchIndex

CORE_TOOLS = ("python", "calculator", "search")
OUTPUT_CHARS = 1500  # of a result the model reads back
MODULE = "tools_module.py"
HARNESS = """import contextlib, io, json, sys
payload = json.loads(sys.stdin.read())
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    import tools_module as m
    for name, args in payload["history"]:
        getattr(m, name)(**args)
    printed.seek(0)
    printed.truncate()
    name, args = payload["call"]
    result = getattr(m, name)(**args)
if isinstance(result, str):
    content = result
elif result is None:
    content = printed.getvalue().strip() or "null"
else:
    content = json.dumps(result, ensure_ascii=False, default=str)
print(json.dumps({"content": content}))
print(payload["sentinel"])
"""


def core_specs(names: Iterable[str]) -> list[ToolSpec]:
    """The core tools asked for, in ``CORE_TOOLS`` order."""
    wanted = set(names)
    specs = {
        "python": tool_schema(
            "python",
            "Run a Python 3 program and return what it prints. Print the values you need; there is "
            "no network and no file from outside.",
            {"code": {"type": "string", "description": "The complete program."}},
            ["code"],
        ),
        "calculator": tool_schema(
            "calculator",
            "Evaluate a math expression exactly, or solve an equation, with SymPy. Examples: "
            "'17 * 23 + 5', '2**10 / 3', 'sqrt(2) * pi', 'x**2 - 4 = 0'.",
            {"expression": {"type": "string", "description": "The expression or equation."}},
            ["expression"],
        ),
        "search": tool_schema(
            "search",
            "Search the document collection and return the best-matching passages with their titles.",
            {"query": {"type": "string", "description": "Keywords to search for."}},
            ["query"],
        ),
    }
    return [ToolSpec(id=n, name=n, executor=n, function=specs[n]) for n in CORE_TOOLS if n in wanted]  # type: ignore[arg-type]


def load_module(path: str | Path) -> Any:
    """Import a tools file (the user's own code) under a name of its own, to read its functions."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--tools {path}: no such file")
    name = "synth_user_tools_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--tools {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ValueError(f"--tools {path}: importing it failed: {type(e).__name__}: {e}") from None
    return module


def function_specs(
    path: str | Path, reserved: Iterable[str] = CORE_TOOLS
) -> tuple[list[ToolSpec], dict[str, str]]:
    """(specs, skipped): a spec per public function defined in the file (in file order), and the
    functions left out with the reason (no docstring, an unannotated parameter, ...)."""
    module = load_module(path)
    text = Path(path).read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    functions = [
        (name, fn)
        for name, fn in vars(module).items()
        if inspect.isfunction(fn) and fn.__module__ == module.__name__ and not name.startswith("_")
    ]
    functions.sort(key=lambda item: item[1].__code__.co_firstlineno)
    specs, skipped = [], {}
    reserved = set(reserved)
    for name, fn in functions:
        if name in reserved:
            skipped[name] = f"its name is a core tool's ({name})"
            continue
        try:
            schema = function_schema(fn)
        except SchemaError as e:
            skipped[name] = str(e)
            continue
        specs.append(ToolSpec(id=name, name=name, executor="function", function=schema,
                              source=str(Path(path).name), source_hash=digest))  # fmt: skip
    return specs, skipped


def sandbox_import_error(module_text: str, sandbox: Sandbox) -> str | None:
    """Why a tools file does not import in the sandbox (a package the system's Python lacks, a
    syntax the sandbox's Python does not read), or None."""
    job = Job(files={MODULE: module_text, "check_import.py": "import tools_module\n"}, language="python",
              entry="check_import.py", limits=sandbox.limits)  # fmt: skip
    (result,) = sandbox.run([job])
    if result.passed:
        return None
    lines = (result.stderr.strip() or result.error or f"exit code {result.exit_code}").splitlines()
    return lines[-1] if lines else result.status


@dataclass
class Execution:
    """What running one call gave: the result (or error) text and the rejection reason, if any."""

    output: str
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def clip(text: str, n: int = OUTPUT_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= n else text[: n // 2] + "\n...\n" + text[-n // 2 :]


class Toolbox:
    """The run's tools: their schemas, and the execution of calls (``validate``, ``local``, ``job``,
    ``outcome``: what the execution stage composes)."""

    def __init__(
        self,
        specs: Iterable[ToolSpec],
        sandbox: Sandbox,
        *,
        index: SearchIndex | None = None,
        calculator: Calculator | None = None,
        module_text: str | None = None,
        search_k: int = 3,
    ) -> None:
        self.specs = {s.name: s for s in specs}
        self.sandbox = sandbox
        self.index = index
        self.calculator = calculator
        self.module_text = module_text
        self.search_k = search_k

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.specs)

    def schemas(self) -> list[dict[str, Any]]:
        return [s.function for s in self.specs.values()]

    def close(self) -> None:
        if self.calculator is not None:
            self.calculator.close()

    # -- checking ----------------------------------------------------------------------------
    def validate(self, call: Call) -> Execution | None:
        """A failed check (unknown tool, arguments against the schema), or None."""
        spec = self.specs.get(call.name)
        if spec is None:
            known = ", ".join(sorted(self.specs))
            return Execution(
                f"Error: there is no tool named {call.name!r}; the tools are: {known}.", "unknown_tool"
            )
        problem = check_arguments(call.arguments, spec.parameters)
        if problem:
            return Execution(f"Error: bad arguments for {call.name}: {problem}.", "schema_violation")
        return None

    # -- running -----------------------------------------------------------------------------
    def local(self, call: Call) -> Execution | None:
        """The result of a call that runs in this process (calculator, search); None for a sandbox one."""
        executor = self.specs[call.name].executor
        if executor == "calculator":
            if self.calculator is None:
                self.calculator = Calculator()
            ok, text = self.calculator.evaluate(call.arguments["expression"])
            if ok:
                return Execution(text)
            reason = "timeout" if text.startswith("TimeoutError") else "execution_error"
            return Execution(f"Error: {text}", reason)
        if executor == "search":
            if self.index is None:
                return Execution("Error: there is no document collection to search.", "execution_error")
            return Execution(self.index.render(call.arguments["query"], self.search_k))
        return None

    def job(self, call: Call, history: list[Call]) -> Job:
        """The sandbox job of a python or user-function call (``history``: the trace's earlier
        successful calls of user functions, replayed first)."""
        spec = self.specs[call.name]
        limits = self.sandbox.limits
        if spec.executor == "python":
            return Job(
                files={"main.py": call.arguments["code"]}, language="python", entry="main.py", limits=limits
            )
        token = new_sentinel()
        payload = {
            "sentinel": token,
            "history": [
                [c.name, c.arguments] for c in history if self.specs.get(c.name, spec).executor == "function"
            ],
            "call": [call.name, call.arguments],
        }
        files = {MODULE: self.module_text or "", "run_call.py": HARNESS}
        return Job(files=files, language="python", entry="run_call.py", limits=limits,
                   stdin=json.dumps(payload), sentinel=token)  # fmt: skip

    def outcome(self, call: Call, result: Result) -> Execution:
        """The result text and reason of a finished sandbox job."""
        if result.status == "error":
            return Execution(f"Error: the sandbox failed: {result.error}", "sandbox_error")
        if result.timed_out:
            return Execution(
                f"Error: the call ran longer than {self.sandbox.limits.timeout_s:g}s.", "timeout"
            )
        if not result.passed:
            lines = (
                result.stderr.strip() or result.stdout.strip() or f"exit code {result.exit_code}"
            ).splitlines()
            return Execution("Error: " + clip("\n".join(lines[-4:]), 600), "execution_error")
        if self.specs[call.name].executor == "python":
            return Execution(clip(result.stdout) or "(no output)")
        try:
            content = json.loads(result.stdout.strip().splitlines()[-1])["content"]
        except (ValueError, IndexError, KeyError, TypeError):
            return Execution("Error: the function printed no result.", "execution_error")
        return Execution(clip(str(content)))

    def execute(self, calls: list[tuple[Call, list[Call]]]) -> list[Execution]:
        """Check and run calls (each with its trace's history): sandbox jobs of a batch in parallel."""
        out: dict[int, Execution] = {}
        jobs: list[tuple[int, Job]] = []
        for i, (call, history) in enumerate(calls):
            found = self.validate(call) or self.local(call)
            if found is not None:
                out[i] = found
            else:
                jobs.append((i, self.job(call, history)))
        for (i, _), result in zip(jobs, self.sandbox.run([j for _, j in jobs]), strict=True):
            out[i] = self.outcome(calls[i][0], result)
        return [out[i] for i in range(len(calls))]


def record(step: int, call: Call, execution: Execution, toolbox: Toolbox) -> CallRecord:
    spec = toolbox.specs.get(call.name)
    return CallRecord(step=step, name=call.name, arguments=call.arguments_json,
                      executor=spec.executor if spec else None, ok=execution.ok, reason=execution.reason,
                      output=execution.output)  # fmt: skip
