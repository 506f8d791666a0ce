"""Execution: static analysis, then solution + tests in the sandbox, one verdict per candidate.

The rule, checked in order; the first failure is the rejection reason the funnel counts and its detail is
the feedback a repair round gets: ``no_code`` (no code in the reply), ``syntax_error`` / ``lint`` (ruff),
``no_tests`` / ``tests_syntax_error`` / ``weak_tests`` (the test script), then the sandbox run:
``test_failed`` (an assertion failed), ``runtime_error`` (any other exception), ``exited_early`` (exit
status 0 before the harness printed the run's sentinel, i.e. before every test ran: ``sys.exit(0)``,
``os._exit(0)``, ``raise SystemExit`` in the solution or early in the tests), ``timeout``, ``oom``,
``output_limit``, ``sandbox_error`` (the sandbox itself failed: not the model's fault, not repaired).
A candidate that passes is kept. Every run is appended to the candidate's ``attempts``.

Execution round ``repair_round`` n (stage ``execute_round{n}``) runs what repair round n produced (0:
the first try); ``round`` elsewhere is the post-training round the rows belong to (provenance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandboxes import Job, Result
from synth.stages.code.common import EXITED_EARLY, python_job, tail
from synth.stages.code.items import Attempt, Candidate
from synth.stages.code.static import Finding, ruff_check, verdict
from synth.stages.code.unittests import NO_ASSERT_EXIT, NO_ASSERT_MESSAGE, build_test_script
from synth.stages.execute import ExecuteStage
from synth.stages.llm import Reject

NOT_REPAIRABLE = ("sandbox_error",)


def classify(result: Result) -> str | None:
    """None when the tests passed, else the rejection reason."""
    if result.passed:
        return None
    status = result.status
    if status in ("timeout", "oom", "output_limit"):
        return status
    if status == "incomplete":
        return EXITED_EARLY
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
    if result.status == "incomplete":
        parts.append(
            "The program exited before the tests finished: something called an exit (sys.exit, "
            "os._exit, raise SystemExit, process.exit, exit) before the last check ran, so the run "
            "does not count as passed."
        )
    if result.stdout.strip():
        parts.append("stdout:\n" + tail(result.stdout, 400))
    if result.stderr.strip():
        parts.append("stderr:\n" + tail(result.stderr))
    if result.error:
        parts.append("sandbox error: " + result.error)
    return "\n".join(parts)


@dataclass(kw_only=True)
class Execute(ExecuteStage):
    """Execution after repair round ``repair_round`` (stage ``execute_round{repair_round}``; 0: the first
    try): ruff once per batch, then each candidate's tests in the sandbox."""

    name: str = ""
    repair_round: int = 0
    _findings: dict[str, list[Finding]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or f"execute_round{self.repair_round}"

    def __call__(self, candidates: list[Candidate]):
        with_code = [c for c in candidates if c.code]
        found = ruff_check([c.code for c in with_code])  # one ruff process for the batch
        self._findings = {c.id: f for c, f in zip(with_code, found, strict=True)}
        return super().__call__(candidates)

    def job(self, cand: Candidate) -> Job:
        found = self._findings.get(cand.id, [])
        if not cand.code:
            raise Reject("no_code", "Your answer contained no Python code.")
        static = verdict(found)
        if static:
            report = "\n".join(f.render() for f in found)
            raise Reject(static, f"ruff reported:\n{tail(report)}")
        if not cand.tests:
            raise Reject("no_tests", "There were no tests (no Python code in the test reply).")
        script, reason, detail = build_test_script(cand.tests, cand.code)
        if script is None:
            raise Reject(reason or "tests_syntax_error", detail)
        return python_job(cand.code, script, self.sandbox.limits)

    def verdict(self, cand: Candidate, result: Result) -> str | None:
        return classify(result)

    def record(
        self, cand: Candidate, result: Result | None, reason: str | None, detail: str = ""
    ) -> Candidate:
        feedback = describe(result) if result is not None else detail
        lint = [f.render() for f in self._findings.get(cand.id, [])]
        if reason and lint and reason not in ("syntax_error", "lint"):  # warnings help a repair too
            feedback += "\n\nruff also reported:\n" + tail("\n".join(lint), 500)
        if result is not None:
            cand.last_run = {k: v for k, v in result.to_dict().items() if k not in ("stdout", "stderr")}
        cand.attempts.append(
            Attempt(
                repair_round=self.repair_round,
                code=cand.code,
                tests=cand.tests,
                passed=reason is None,
                reason=reason,
                feedback=feedback if reason else "",
                lint=lint,
            )
        )
        return cand
