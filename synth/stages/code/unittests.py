"""Unit tests: the model writes an assert-based test script for each candidate solution, and
``build_test_script`` turns it into the program the sandbox runs next to ``solution.py``.

The harness rule, in one place: the script starts with ``from solution import *``; top-level
definitions that would shadow the solution's own names are removed (a test of a copy proves nothing);
``test_*`` functions and ``unittest`` cases are called; every ``assert`` (and ``self.assert*``) is
counted, and a script in which no assertion ran fails ('weak_tests') instead of passing vacuously.

Proof that every test ran: the harness reads a per-run token (``Job.sentinel``) from the first line of
stdin before ``solution`` is imported and prints it after the last check. Exiting 0 any earlier
(``sys.exit(0)`` / ``raise SystemExit`` / ``os._exit(0)`` in the solution, on import or in a call, or in
the tests before their asserts) leaves it unprinted: 'exited_early', not a pass. A successful exit that
is the script's very last statement (alone or ending a final ``if``, e.g. after ``test_x()`` in an
``if __name__ == "__main__"`` block) is removed like ``unittest.main()``: every assertion has run by then.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from synth.engines.base import Completion
from synth.stages.code.common import CodeStage, block
from synth.stages.code.extract import extract_code
from synth.stages.code.items import Candidate

NO_ASSERT_EXIT = 3
NO_ASSERT_MESSAGE = "no assertion ran: the tests must assert on the solution's results"

_PROLOGUE = """\
import sys as _synth_sys
_synth_token = _synth_sys.stdin.readline().strip()
from solution import *
_synth_hits = [0]
def _synth_hit():
    _synth_hits[0] += 1
"""
_EPILOGUE = f"""
def _synth_finish():
    import inspect, unittest
    for _name, _fn in list(globals().items()):
        if _name.startswith("test") and inspect.isfunction(_fn) and _fn.__module__ == "__main__":
            if not [p for p in inspect.signature(_fn).parameters.values() if p.default is p.empty]:
                _fn()
    _suite = unittest.defaultTestLoader.loadTestsFromModule(_synth_sys.modules["__main__"])
    if _suite.countTestCases():
        _result = unittest.TextTestRunner(stream=_synth_sys.stderr, verbosity=1).run(_suite)
        if not _result.wasSuccessful():
            _synth_sys.exit(1)
    if _synth_hits[0] == 0:
        print({NO_ASSERT_MESSAGE!r}, file=_synth_sys.stderr)
        _synth_sys.exit({NO_ASSERT_EXIT})
    if _synth_token:  # every check ran: the proof (Job.sentinel)
        import os
        _synth_sys.stdout.flush()
        os.write(1, (_synth_token + "\\n").encode())
_synth_finish()
"""


def defined_names(code: str) -> set[str]:
    """Top-level functions, classes and assigned names of a solution (empty if it does not parse)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


class _Count(ast.NodeTransformer):
    """Put a hit counter before every assert statement and every ``x.assert*(...)`` call statement."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for fld in ("body", "orelse", "finalbody", "handlers"):
            stmts = getattr(node, fld, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                new: list[ast.stmt] = []
                for s in stmts:
                    if _is_assertion(s):
                        new.append(ast.Expr(ast.Call(ast.Name("_synth_hit", ast.Load()), [], [])))
                    new.append(s)
                setattr(node, fld, new)
        return node


def _is_assertion(s: ast.stmt) -> bool:
    if isinstance(s, ast.Assert):
        return True
    return (
        isinstance(s, ast.Expr)
        and isinstance(s.value, ast.Call)
        and isinstance(s.value.func, ast.Attribute)
        and s.value.func.attr.startswith("assert")
    )


def _is_unittest_main(s: ast.stmt) -> bool:
    return (
        isinstance(s, ast.Expr)
        and isinstance(s.value, ast.Call)
        and isinstance(s.value.func, ast.Attribute)
        and s.value.func.attr == "main"
        and isinstance(s.value.func.value, ast.Name)
        and s.value.func.value.id == "unittest"
    )


def _is_clean_exit(s: ast.stmt) -> bool:
    """``sys.exit()`` / ``exit(0)`` / ``quit(None)`` / ``os._exit(0)``: a successful exit call."""
    if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)) or s.value.keywords:
        return False
    func, args = s.value.func, s.value.args
    named = isinstance(func, ast.Name) and func.id in ("exit", "quit")
    dotted = (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and (func.value.id, func.attr) in (("sys", "exit"), ("os", "_exit"))
    )
    if not args:  # os._exit() needs its status
        return named or (dotted and func.attr == "exit")
    code = args[0].value if len(args) == 1 and isinstance(args[0], ast.Constant) else "?"
    return (named or dotted) and (code is None or (type(code) in (int, bool) and code == 0))


def _drop_final_exit(body: list[ast.stmt]) -> None:
    """Remove a successful exit that is the script's last statement, or the last of a final ``if``."""
    if body and _is_clean_exit(body[-1]):
        body.pop()
    elif body and isinstance(body[-1], ast.If) and body[-1].body and _is_clean_exit(body[-1].body[-1]):
        body[-1].body = body[-1].body[:-1] or [ast.Pass()]


def build_test_script(tests: str, code: str) -> tuple[str | None, str | None, str]:
    """(script, None, "") or (None, reason, feedback) for a test script that cannot be run."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError) as e:
        line = getattr(e, "lineno", None)
        return (
            None,
            "tests_syntax_error",
            f"test_solution.py line {line}: SyntaxError: {getattr(e, 'msg', e)}",
        )
    own = defined_names(code)
    body = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name in own:
            continue  # shadows the solution: test the real one
        if isinstance(node, ast.ImportFrom) and node.module == "solution":
            continue
        if _is_unittest_main(node):
            continue
        if isinstance(node, ast.If) and any(_is_unittest_main(s) for s in node.body):
            node.body = [s for s in node.body if not _is_unittest_main(s)] or [ast.Pass()]
        body.append(node)
    _drop_final_exit(body)
    tree.body = body
    if not any(_is_assertion(s) for s in ast.walk(tree) if isinstance(s, ast.stmt)):
        return None, "weak_tests", "The tests contain no assert statement."
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    if own and not used & own:
        return None, "weak_tests", f"The tests never call the solution (it defines {', '.join(sorted(own))})."
    tree = ast.fix_missing_locations(_Count().visit(tree))
    return _PROLOGUE + ast.unparse(tree) + "\n" + _EPILOGUE, None, ""


@dataclass(kw_only=True)
class WriteTests(CodeStage):
    """One test script per candidate that has code (written from the problem and that code); a
    candidate without code passes through (execution rejects it as 'no_code')."""

    name: str = "write_tests"
    template = "code/tests"

    def asks(self, cand: Candidate) -> bool:
        return bool(cand.code)

    def variables(self, cand: Candidate) -> dict[str, str]:
        return {"problem": cand.problem, "code": block(cand.code or "")}

    def parse(self, cand: Candidate, reply: Completion, j: int, messages) -> Candidate:
        return cand.model_copy(
            deep=True, update={"tests": extract_code(reply.text), "tests_reply": reply.text}
        )
