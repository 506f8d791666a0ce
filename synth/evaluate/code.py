"""Code: pass@1 of a model on held-out function-writing tasks, each reply executed with the task's unit
tests in the sandbox.

Llama 3 reports code as pass@1 on HumanEval/MBPP-style tasks (section 5.2.1): the model writes a function
from its description and hidden tests decide. Here the tasks are the project's own held-out set
(``pipelines/data/heldout/code.jsonl``: ``{"id", "entry_point", "prompt", "tests", "solution"?}``;
``solution`` is a reference the test suite runs through this same checker, never shown to the model).
The model answers greedily; the code is taken from its reply as the code recipe takes it
(``synth.stages.code.extract.extract_code``), and run next to the tests with the recipe's harness
(``build_test_script``: every ``assert`` counted, a sentinel that proves all of them ran) in the
project's sandbox (``sandboxes``), then judged by the recipe's rule (``synth.stages.code.execute.classify``).
pass@1 is the share of tasks whose reply passes. A failed task records why: ``no_code``,
``syntax_error`` (often a reply cut at max_tokens), ``missing_function`` (the code does not define
``entry_point``), ``test_failed``, ``runtime_error``, ``exited_early``, ``timeout``, ``oom``,
``output_limit`` or ``sandbox_error``.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from sandboxes import Job, Limits
from synth.engines.base import Engine, Request
from synth.evaluate.common import Progress, greedy_replies, read_rows, share
from synth.stages.code.common import python_job, tail
from synth.stages.code.execute import classify
from synth.stages.code.extract import extract_code
from synth.stages.code.unittests import build_test_script, defined_names
from synth.stages.execute import Sandbox

INSTRUCTION = (
    "Write the complete function in Python, with any imports it needs, in one ```python code block. "
    "Do not include tests or example calls."
)


class CodeTask(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: StrictStr
    entry_point: StrictStr = Field(min_length=1)
    prompt: StrictStr = Field(min_length=1)
    tests: StrictStr = Field(min_length=1)
    solution: StrictStr | None = None


def read_tasks(path: str | Path, limit: int | None = None) -> list[CodeTask]:
    return list(read_rows(path, CodeTask, limit))


def messages(task: CodeTask) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{task.prompt}\n\n{INSTRUCTION}"}]


def _syntax_error(code: str) -> str | None:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError) as e:
        return f"line {getattr(e, 'lineno', None)}: {getattr(e, 'msg', e)}"
    return None


def check_code(
    tasks: list[CodeTask], codes: list[str | None], sandbox: Sandbox
) -> list[tuple[bool, str | None, str]]:
    """(passed, reason, detail) for each task's code (None: the reply held none), all runs at once."""
    verdicts: dict[int, tuple[bool, str | None, str]] = {}
    jobs: list[tuple[int, Job]] = []
    for i, (task, code) in enumerate(zip(tasks, codes, strict=True)):
        if not code:
            verdicts[i] = (False, "no_code", "the reply holds no Python code")
        elif (error := _syntax_error(code)) is not None:
            verdicts[i] = (False, "syntax_error", error)
        elif task.entry_point not in defined_names(code):
            verdicts[i] = (False, "missing_function", f"the code does not define {task.entry_point}")
        else:
            script, reason, detail = build_test_script(task.tests, code)
            if script is None:  # the task's own tests: a broken set, not the model's fault
                raise ValueError(f"code task {task.id}: its tests cannot run: {reason}: {detail}")
            jobs.append((i, python_job(code, script, sandbox.limits)))
    for (i, _), result in zip(jobs, sandbox.run([j for _, j in jobs]), strict=True):
        reason = classify(result)
        verdicts[i] = (
            reason is None,
            reason,
            tail(result.stderr or result.error or "", 600) if reason else "",
        )
    return [verdicts[i] for i in range(len(tasks))]


def evaluate_code(
    engine: Engine,
    rows: list[CodeTask],
    *,
    max_tokens: int = 256,
    batch_size: int = 16,
    timeout: float = 10.0,
    memory_mb: int = 512,
    backend: str = "local",
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """pass@1 (greedy) on ``rows``: ``{"pass@1", "n", "reasons", "results"}``."""
    if not rows:
        raise ValueError("no code tasks to evaluate")
    sandbox = Sandbox(
        backend=backend, limits=Limits(timeout_s=timeout, memory_mb=memory_mb), max_workers=workers
    )
    sandbox.check()  # no isolation here: stop now, not 'sandbox_error' on every task
    requests = [Request.chat(messages(t), id=t.id) for t in rows]
    replies = greedy_replies(
        engine, requests, max_tokens=max_tokens, batch_size=batch_size, progress=progress
    )
    codes = [extract_code(r.text, "python") for r in replies]
    verdicts = check_code(rows, codes, sandbox)
    results = [
        {"id": t.id, "passed": ok, "reason": reason, "detail": detail, "code": code, "reply": r.text,
         "finish_reason": r.finish_reason}
        for t, r, code, (ok, reason, detail) in zip(rows, replies, codes, verdicts, strict=True)
    ]  # fmt: skip
    passed = sum(r["passed"] for r in results)
    return {
        "pass@1": share(passed, len(rows)),
        "n": len(rows),
        "passed": passed,
        "reasons": dict(Counter(r["reason"] for r in results if r["reason"])),
        "results": results,
    }
