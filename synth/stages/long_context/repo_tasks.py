"""Code-repository reasoning: take a key file out of a repository, ask which files depend on it and ask
for the file back; grade the first exactly and run the second in the sandbox.

- ``FindKeyFiles``: a repository -> one ``RepoTask`` per key file (``repo.analyse``), up to ``per_repo``,
  most depended-upon first; a repository without one is rejected 'no_key_file' (with its most imported
  file and how often).
- ``CheckRepo`` (the sandbox) first proves a task can be checked: the repository as it is must pass
  ('original_fails' otherwise), and without the file it must fail ('removal_undetected' otherwise: a
  repository whose dependents guard their imports would let any rewrite pass). Then it runs each
  rewrite in place of the file.
- The check (``repo_job``): the repository's files with the file under test, and a harness that imports
  every dependent (by module name, or from its path when its name is not importable) and runs the
  repository's test files (``unittest`` cases and plain ``test_*`` functions; no pytest in the sandbox),
  then prints the run's sentinel. Reasons: 'import_failed' (a dependent or a test file does not import),
  'tests_failed', 'exited_early', 'timeout', 'oom', 'output_limit', 'sandbox_error'.
- ``GradeDependents``: the paths a reply names (``parse_paths``) against the exact dependents: set
  equality keeps it; precision, recall and F1 are recorded on every answer ('dependents_wrong', with
  what is missing and what is extra, otherwise).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

from sandboxes import Job, Limits, Result, new_sentinel
from synth.engines.base import Completion
from synth.prompts import load_prompt
from synth.records import Message, Record, SFTRecord
from synth.stages.code.common import tail
from synth.stages.code.extract import extract_code, fence
from synth.stages.execute import ExecuteStage
from synth.stages.llm import LLMStage, Reject
from synth.stages.long_context.items import CAPABILITY, DependentsAnswer, MissingFile, Repo, RepoTask
from synth.stages.long_context.repo import analyse, module_name

HARNESS = "_synth_repo_check.py"
IMPORT_FAILED, TESTS_FAILED = 3, 4

HARNESS_SOURCE = """\
import importlib
import importlib.util
import inspect
import io
import os
import sys
import traceback
import unittest

DEPENDENTS = {dependents!r}
TESTS = {tests!r}
ROOTS = {roots!r}
token = sys.stdin.readline().strip()
for root in reversed(ROOTS):
    sys.path.insert(0, os.path.abspath(root))


def load(path, name):
    if name and all(part.isidentifier() for part in name.split(".")):
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location("_dependent_%d" % abs(hash(path)), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_or_exit(path, name):
    try:
        return load(path, name)
    except BaseException:
        traceback.print_exc()
        print("import failed: " + path, file=sys.stderr)
        sys.exit({import_failed})


for path, name in DEPENDENTS:
    load_or_exit(path, name)
failed = []
for path, name in TESTS:
    module = load_or_exit(path, name)
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    report = io.StringIO()
    result = unittest.TextTestRunner(stream=report, verbosity=0).run(suite)
    if result.failures or result.errors:
        sys.stderr.write(report.getvalue())
    failed += [str(test) for test, _ in result.failures + result.errors]
    for attr, fn in sorted(vars(module).items()):
        if not (attr.startswith("test") and inspect.isfunction(fn) and fn.__module__ == module.__name__):
            continue
        if any(p.default is p.empty for p in inspect.signature(fn).parameters.values()):
            continue  # a pytest fixture user: nothing to call it with
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            failed.append(path + "::" + attr)
if failed:
    print("tests failed: " + ", ".join(failed), file=sys.stderr)
    sys.exit({tests_failed})
print(token)
"""


def listing(files: dict[str, str]) -> str:
    """A repository as a prompt shows it: every file, sorted by path, under its path."""
    return "\n\n".join(
        f"### {path}\n{fence(src.rstrip() or '# (empty)', 'python')}" for path, src in sorted(files.items())
    )


def repo_job(
    files: dict[str, str], dependents: list[tuple[str, str]], tests: list[tuple[str, str]], roots: list[str],
    limits: Limits,
) -> Job:  # fmt: skip
    """The sandbox job that checks a repository: its files, and the harness (see the module's docstring)."""
    if HARNESS in files:
        raise Reject("harness_name_taken")
    script = HARNESS_SOURCE.format(dependents=dependents, tests=tests, roots=roots,
                                   import_failed=IMPORT_FAILED, tests_failed=TESTS_FAILED)  # fmt: skip
    token = new_sentinel()
    return Job(files={**files, HARNESS: script}, language="python", entry=HARNESS, limits=limits,
               stdin=token + "\n", sentinel=token)  # fmt: skip


def classify(result: Result) -> str | None:
    """None when the check passed, else why not."""
    if result.passed:
        return None
    status = result.status
    if status in ("timeout", "oom", "output_limit"):
        return status
    if status == "incomplete":
        return "exited_early"
    if status == "error":
        return "sandbox_error"
    return {IMPORT_FAILED: "import_failed", TESTS_FAILED: "tests_failed"}.get(
        result.exit_code, "runtime_error"
    )


@dataclass
class FindKeyFiles:
    """Repositories -> a task per key file (see the module's docstring)."""

    min_dependents: int = 5
    per_repo: int = 1
    name: str = "key_files"

    def __call__(self, repos: list[Repo]) -> list[Record]:
        out: list[Record] = []
        for repo in repos:
            index = analyse(repo.files)
            keys = index.key_files(self.min_dependents)
            if index.unparsed:
                repo.meta["unparsed_files"] = index.unparsed
            if not keys:
                top = index.most_imported()
                repo.meta["detail"] = (
                    f"most imported: {top[0]}, by {top[1]} file(s)" if top else "no file imports another"
                ) + f" (< {self.min_dependents})"
                repo.reject(self.name, "no_key_file")
                out.append(repo)
                continue
            for path, deps in keys[: self.per_repo]:
                task = RepoTask(
                    id=f"{repo.id}:{path}",
                    repo=repo.id,
                    removed=path,
                    original=repo.files[path],
                    dependents=deps,
                    dependent_modules=[index.module_of.get(d, "") for d in deps],
                    files={p: s for p, s in repo.files.items() if p != path},
                    tests=[t for t in index.tests if t != path],
                    roots=index.roots,
                    provenance=repo.provenance,
                    meta={"key_files": {p: len(d) for p, d in keys}, "test_modules": {
                        t: index.module_of.get(t, "") for t in index.tests}},
                )  # fmt: skip
                task.keep(self.name)
                out.append(task)
        return out


def _tests(item: RepoTask | MissingFile, modules: dict[str, str]) -> list[tuple[str, str]]:
    return [(t, modules.get(t, "")) for t in item.tests]


@dataclass(kw_only=True)
class CheckRepo(ExecuteStage):
    """The sandbox check of a task's repository with the file as it was (``mode`` 'original'), without
    it ('removed'), or with a model's rewrite ('rewrite': a passing rewrite becomes the SFT row)."""

    mode: str
    limits: Limits

    def job(self, item: RepoTask | MissingFile) -> Job:
        files = dict(item.files)
        if self.mode == "original":
            files[item.removed] = item.original
        elif self.mode == "rewrite":
            files[item.removed] = item.code
        deps = list(zip(item.dependents, item.dependent_modules, strict=True))
        return repo_job(files, deps, _tests(item, item.meta.get("test_modules", {})), item.roots, self.limits)

    def verdict(self, item: Any, result: Result) -> str | None:
        reason = classify(result)
        if self.mode == "removed":
            if reason == "sandbox_error":
                return reason
            return "removal_undetected" if reason is None else None
        if self.mode == "original" and reason is not None:
            return "sandbox_error" if reason == "sandbox_error" else "original_fails"
        return reason

    def record(self, item: Any, result: Result | None, reason: str | None, detail: str = "") -> Record:
        if result is not None:
            item.meta[f"check_{self.mode}"] = {
                "status": result.status, "exit_code": result.exit_code, "reason": classify(result),
                "stderr": tail(_TIMING.sub(r"\1", result.stderr), 1500),
            }  # fmt: skip
        elif detail:
            item.meta["detail"] = detail
        if self.mode != "rewrite" or reason is not None:
            return item
        return SFTRecord(
            id=item.id,
            messages=[Message(role="user", content=item.request),
                      Message(role="assistant", content=fence(item.code, "python"))],  # fmt: skip
            provenance=item.provenance,
            scores=dict(item.scores),
            verdicts=list(item.verdicts),
            meta={"task": "repo_missing_file", "task_id": item.task_id, "removed": item.removed,
                  "check": item.meta.get("check_rewrite")},
        )  # fmt: skip


@dataclass(kw_only=True)
class RepoStage(LLMStage):
    """An LLM stage over repository tasks: the repository without the file, in the prompt."""

    capability: str = CAPABILITY
    template: str = ""

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = load_prompt(self.template)

    def variables(self, task: RepoTask) -> dict[str, Any]:
        return {"repo": task.repo, "removed": task.removed, "files": listing(task.files)}


_TIMING = re.compile(r"(Ran \d+ tests?) in [\d.]+s")  # rows stay the same from run to run
_PATH = re.compile(r"[\w./-]*\w\.py\b")
_DOTTED = re.compile(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\b")


def parse_paths(text: str, task: RepoTask) -> list[str]:
    """The files a reply names: repository paths (``./`` dropped), module names of the repository, and
    a bare file name that is one file's alone; other .py names stay as written (they count as wrong).
    The removed file itself (named by the question) is left out."""
    known = {**task.files, task.removed: ""}
    by_module = {m: p for p in known if (m := module_name(p, task.roots))}
    by_name: dict[str, list[str]] = {}
    for p in known:
        by_name.setdefault(p.rsplit("/", 1)[-1], []).append(p)
    found: set[str] = set()
    for raw in _PATH.findall(text):
        path = raw.lstrip("./") if raw.startswith(("./", "/")) else raw
        if path in known:
            found.add(path)
        elif len(by_name.get(path, [])) == 1:
            found.add(by_name[path][0])
        else:
            found.add(path)
    for dotted in _DOTTED.findall(_PATH.sub(" ", text)):
        if dotted in by_module:
            found.add(by_module[dotted])
    found.discard(task.removed)
    return sorted(found)


@dataclass(kw_only=True)
class FindDependents(RepoStage):
    """Tasks -> the model's answer to which files depend on the removed one ('no_paths': it names none)."""

    name: str = "find_dependents"
    template: str = "long_context/dependents"

    def output_id(self, task: RepoTask, j: int) -> str:
        return f"{task.id}#deps{j}"

    def parse(self, task: RepoTask, reply: Completion, j: int, messages) -> DependentsAnswer:
        predicted = parse_paths(reply.text, task)
        if not predicted:
            raise Reject("no_paths")
        return DependentsAnswer(
            id=self.output_id(task, j),
            task_id=task.id,
            removed=task.removed,
            request=messages[-1]["content"],
            reply=reply.text.strip(),
            predicted=predicted,
            dependents=task.dependents,
            meta={"finish_reason": reply.finish_reason},
        )


@dataclass(kw_only=True)
class WriteMissingFile(RepoStage):
    """Tasks -> the model's rewrite of the removed file ('no_code', 'syntax_error' when unusable)."""

    name: str = "write_missing_file"
    template: str = "long_context/missing_file"

    def output_id(self, task: RepoTask, j: int) -> str:
        return f"{task.id}#file{j}"

    def parse(self, task: RepoTask, reply: Completion, j: int, messages) -> MissingFile:
        code = extract_code(reply.text, "python")
        if not code or not code.strip():
            raise Reject("no_code")
        try:
            ast.parse(code)
        except (SyntaxError, ValueError) as e:
            raise Reject("syntax_error", str(e)) from None
        return MissingFile(
            id=self.output_id(task, j),
            task_id=task.id,
            removed=task.removed,
            request=messages[-1]["content"],
            reply=reply.text,
            code=code,
            dependents=task.dependents,
            dependent_modules=task.dependent_modules,
            files=task.files,
            tests=task.tests,
            roots=task.roots,
            meta={"finish_reason": reply.finish_reason, "test_modules": task.meta.get("test_modules", {})},
        )


@dataclass
class GradeDependents:
    """Answers -> SFT rows when the paths they name are exactly the dependents (see the docstring)."""

    name: str = "grade_dependents"

    def __call__(self, answers: list[DependentsAnswer]) -> list[Record]:
        out: list[Record] = []
        for ans in answers:
            got, want = set(ans.predicted), set(ans.dependents)
            hit = len(got & want)
            precision = hit / len(got) if got else 0.0
            recall = hit / len(want) if want else 1.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            scores = {"dependents_precision": precision, "dependents_recall": recall, "dependents_f1": f1}
            ans.scores.update(scores)
            if got != want:
                ans.meta.update(missing=sorted(want - got), extra=sorted(got - want))
                ans.reject(self.name, "dependents_wrong")
                out.append(ans)
                continue
            row = SFTRecord(
                id=ans.id,
                messages=[
                    Message(role="user", content=ans.request),
                    Message(role="assistant", content=ans.reply),
                ],
                provenance=ans.provenance,
                scores=dict(ans.scores),
                verdicts=list(ans.verdicts),
                meta={"task": "repo_dependents", "task_id": ans.task_id, "removed": ans.removed,
                      "dependents": ans.dependents},
            )  # fmt: skip
            row.keep(self.name)
            out.append(row)
        return out
