"""Run untrusted, model-generated code with isolation and resource limits.

from sandboxes import Limits, run
result = run({"solution.py": src, "test_solution.py": tests}, language="python",
             entry="test_solution.py", limits=Limits(timeout_s=10, memory_mb=512))
result.passed, result.to_dict()

A test harness proves it ran to its end by printing a per-run token: `run(..., stdin=token + "\n",
sentinel=token)` with `token = new_sentinel()`; exiting 0 without it is `incomplete`, not passed.
"""

from sandboxes.api import get_backend, run, run_many
from sandboxes.base import Backend, Job, Limits, Result, SandboxUnavailable, new_sentinel
from sandboxes.languages import LANGUAGES, get_language, language_for_file

__all__ = [
    "LANGUAGES",
    "Backend",
    "Job",
    "Limits",
    "Result",
    "SandboxUnavailable",
    "get_backend",
    "get_language",
    "language_for_file",
    "new_sentinel",
    "run",
    "run_many",
]
