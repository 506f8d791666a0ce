"""Execution: static analysis, then solution + tests in the sandbox, one verdict per candidate.

The rule, checked in order; the first failure is the rejection reason the funnel counts and its detail is
the feedback a repair round gets: ``no_code`` (no code in the reply), ``syntax_error`` / ``lint`` (ruff),
``no_tests`` / ``tests_syntax_error`` / ``weak_tests`` (the test script), then the sandbox run:
``test_failed`` (an assertion failed), ``runtime_error`` (any other exception), ``timeout``, ``oom``,
``output_limit``, ``sandbox_error`` (the sandbox itself failed: not the model's fault, not repaired).
A candidate that passes is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandboxes import Job, Result
from synth.records import SFTRecord
from synth.stages.code.common import Sandbox, tail
from synth.stages.code.static import Finding, ruff_check, verdict
from synth.stages.code.unittests import NO_ASSERT_EXIT, NO_ASSERT_MESSAGE, build_test_script

NOT_REPAIRABLE = ("sandbox_error",)


def classify(result: Result) -> str | None:
    """None when the tests passed, else the rejection reason."""
    if result.passed:
        return None
    status = result.status
    if status in ("timeout", "oom", "output_limit"):
        return status
    if status == "error":
        return "sandbox_error"
    if result.exit_code == NO_ASSERT_EXIT and NO_ASSERT_MESSAGE in result.stderr:
        return "weak_tests"
    if "AssertionError" in result.stderr or "FAILED (failures=" in result.stderr:
        return "test_failed"
    return "runtime_error"


def describe(result: Result) -> str:
    parts = [f"Exit status: {result.status} (exit code {result.exit_code})."]
    if result.timed_out:
        parts.append(f"The program did not finish within the time limit ({result.wall_s:.1f}s).")
    if result.stdout.strip():
        parts.append("stdout:\n" + tail(result.stdout, 400))
    if result.stderr.strip():
        parts.append("stderr:\n" + tail(result.stderr))
    if result.error:
        parts.append("sandbox error: " + result.error)
    return "\n".join(parts)


@dataclass
class Execute:
    sandbox: Sandbox
    stage: str
    round: int = 0

    def __call__(self, candidates: list[SFTRecord]) -> list[SFTRecord]:
        with_code = [c for c in candidates if c.meta.get("code")]
        findings = dict(
            zip([c.id for c in with_code], ruff_check([c.meta["code"] for c in with_code]), strict=True)
        )
        jobs: list[tuple[SFTRecord, Job]] = []
        outcome: dict[str, tuple[str | None, str, list[Finding]]] = {}
        for cand in candidates:
            code, tests = cand.meta.get("code"), cand.meta.get("tests")
            found = findings.get(cand.id, [])
            if not code:
                outcome[cand.id] = ("no_code", "Your answer contained no Python code.", [])
                continue
            static = verdict(found)
            if static:
                report = "\n".join(f.render() for f in found)
                outcome[cand.id] = (static, f"ruff reported:\n{tail(report)}", found)
                continue
            if not tests:
                outcome[cand.id] = (
                    "no_tests",
                    "There were no tests (no Python code in the test reply).",
                    found,
                )
                continue
            script, reason, detail = build_test_script(tests, code)
            if script is None:
                outcome[cand.id] = (reason, detail, found)
                continue
            files = {"solution.py": code, "test_solution.py": script}
            jobs.append(
                (
                    cand,
                    Job(files=files, language="python", entry="test_solution.py", limits=self.sandbox.limits),
                )
            )
        results = self.sandbox.run([j for _, j in jobs])
        for (cand, _), res in zip(jobs, results, strict=True):
            outcome[cand.id] = (classify(res), describe(res), findings.get(cand.id, []))
            cand.meta["last_run"] = {k: v for k, v in res.to_dict().items() if k not in ("stdout", "stderr")}
        for cand in candidates:
            reason, feedback, found = outcome[cand.id]
            lint = [f.render() for f in found]
            if reason and lint and reason not in ("syntax_error", "lint"):  # warnings help a repair too
                feedback += "\n\nruff also reported:\n" + tail("\n".join(lint), 500)
            cand.meta.setdefault("attempts", []).append(
                {
                    "round": self.round,
                    "code": cand.meta.get("code"),
                    "tests": cand.meta.get("tests"),
                    "passed": reason is None,
                    "reason": reason,
                    "feedback": feedback if reason else "",
                    "lint": lint,
                }
            )
            if reason:
                cand.reject(self.stage, reason)
            else:
                cand.keep(self.stage)
        return candidates
