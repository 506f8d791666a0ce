"""The calculator / algebra tool: exact arithmetic and equation solving with SymPy.

An expression is model-written text, so it is never evaluated as Python: it is parsed with ``ast``
and only numbers, single names (symbols, ``pi``, ``E``), the arithmetic operators and a list of math
functions are accepted (anything else is a schema-level error: 'execution_error' with the reason); the
SymPy expression is built from that tree node by node. ``a = b`` solves for the unknowns. SymPy can
still take forever (``9**9**9``) or fill memory, so evaluation happens in a worker process (this
Python, resource-limited) that is killed and restarted when one expression runs past its timeout.

``evaluate_expression`` is the pure rule (used by the worker, and by tests); ``Calculator`` the worker.
"""

from __future__ import annotations

import ast
import json
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

FUNCTIONS = (
    "sqrt", "cbrt", "exp", "log", "ln", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
    "tanh", "abs", "Abs", "floor", "ceiling", "factorial", "binomial", "gcd", "lcm", "Min", "Max", "min",
    "max", "round", "simplify", "expand", "factor", "diff", "integrate", "limit", "mod", "isprime",
)  # fmt: skip
CONSTANTS = ("pi", "E", "e", "I", "oo", "inf")
MAX_CHARS = 500
MAX_DIGITS = 60  # of a literal number
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod, ast.FloorDiv)


class ExpressionError(ValueError):
    """An expression the calculator refuses or cannot evaluate (the message says why)."""


def _split_equation(text: str) -> tuple[str, str | None]:
    cleaned = text.replace("==", "=")
    if cleaned.count("=") > 1:
        raise ExpressionError("at most one '=' (an equation to solve)")
    lhs, eq, rhs = cleaned.partition("=")
    return (lhs, rhs) if eq else (text, None)


def _check(node: ast.AST) -> None:
    """Only arithmetic on numbers, names and whitelisted functions."""
    if isinstance(node, ast.Expression):
        _check(node.body)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
        _check(node.left)
        _check(node.right)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        _check(node.operand)
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if len(str(node.value)) > MAX_DIGITS:
            raise ExpressionError("a number is too long")
    elif isinstance(node, ast.Name):
        if node.id.startswith("_") or len(node.id) > 20:
            raise ExpressionError(f"name {node.id!r} is not allowed")
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            shown = ast.unparse(node.func)
            raise ExpressionError(f"unknown function {shown!r}; known: {', '.join(FUNCTIONS)}")
        if node.keywords or len(node.args) > 4:
            raise ExpressionError(f"{node.func.id}() takes up to 4 positional arguments")
        for arg in node.args:
            _check(arg)
    elif isinstance(node, ast.Tuple):
        for elt in node.elts:
            _check(elt)
    else:
        raise ExpressionError(f"'{ast.unparse(node)}' is not arithmetic")


def parse(text: str) -> list[ast.Expression]:
    """The checked syntax tree(s) of an expression or an equation (``ExpressionError`` otherwise)."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("an empty expression")
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"an expression longer than {MAX_CHARS} characters")
    lhs, rhs = _split_equation(text.replace("^", "**").replace("×", "*").replace("÷", "/"))
    trees = []
    for part in (lhs, rhs) if rhs is not None else (lhs,):
        try:
            tree = ast.parse(part.strip(), mode="eval")
        except SyntaxError as e:
            raise ExpressionError(f"not a valid expression ({e.msg})") from None
        _check(tree)
        trees.append(tree)
    return trees


def _build(node: ast.AST, sp: Any, symbols: dict[str, Any]) -> Any:
    if isinstance(node, ast.Expression):
        return _build(node.body, sp, symbols)
    if isinstance(node, ast.Constant):
        return sp.Integer(node.value) if isinstance(node.value, int) else sp.Rational(str(node.value))
    if isinstance(node, ast.Name):
        fixed = {"pi": sp.pi, "E": sp.E, "e": sp.E, "I": sp.I, "oo": sp.oo, "inf": sp.oo}
        if node.id in fixed:
            return fixed[node.id]
        return symbols.setdefault(node.id, sp.Symbol(node.id))
    if isinstance(node, ast.UnaryOp):
        value = _build(node.operand, sp, symbols)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Tuple):
        return tuple(_build(e, sp, symbols) for e in node.elts)
    if isinstance(node, ast.BinOp):
        a, b = _build(node.left, sp, symbols), _build(node.right, sp, symbols)
        op = type(node.op)
        if op is ast.Add:
            return a + b
        if op is ast.Sub:
            return a - b
        if op is ast.Mult:
            return a * b
        if op is ast.Div:
            return a / b
        if op is ast.Pow:
            return a**b
        if op is ast.Mod:
            return sp.Mod(a, b)
        return sp.floor(a / b)
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    args = [_build(a, sp, symbols) for a in node.args]
    name = node.func.id
    alias = {"ln": "log", "abs": "Abs", "min": "Min", "max": "Max", "mod": "Mod", "cbrt": "cbrt"}
    if name == "round":
        digits = int(args[1]) if len(args) > 1 else 0
        return sp.Float(round(float(args[0].evalf(30)), digits))
    return getattr(sp, alias.get(name, name))(*args)


def _show(value: Any, sp: Any) -> str:
    """An exact value with its decimal (``1024/3 = 341.333333333``), a decimal alone, or an expression."""
    if isinstance(value, bool) or value in (sp.true, sp.false):
        return str(bool(value))
    if value.has(sp.zoo, sp.nan):
        raise ExpressionError("the result is undefined (a division by zero?)")
    if not getattr(value, "is_number", False) or getattr(value, "is_Integer", False):
        return str(value)
    approx = value.evalf(15)
    if not approx.is_real:  # a complex number: exact only
        return str(value)
    decimal = format(float(approx), ".12g")
    if getattr(value, "is_Float", False) or str(value) == decimal:
        return decimal
    return f"{value} = {decimal}"


def evaluate_expression(text: str) -> str:
    """The result as text: an exact value (and its decimal), a simplified expression, or the
    solutions of an equation (``x = -2 or x = 2``); ``ExpressionError`` when it cannot."""
    import sympy as sp

    trees = parse(text)
    symbols: dict[str, Any] = {}
    try:
        if len(trees) == 1:
            value = _build(trees[0], sp, symbols)
            if isinstance(value, tuple):
                return ", ".join(_show(sp.simplify(v), sp) for v in value)
            return _show(sp.simplify(value) if value.free_symbols else value, sp)
        lhs, rhs = (_build(t, sp, symbols) for t in trees)
        unknowns = sorted((lhs - rhs).free_symbols, key=str)
        if not unknowns:
            return str(bool(sp.simplify(lhs - rhs) == 0))
        solutions = sp.solve(sp.Eq(lhs, rhs), unknowns, dict=True)
        if not solutions:
            return "no solution"
        return " or ".join(", ".join(f"{k} = {_show(v, sp)}" for k, v in sol.items()) for sol in solutions)
    except ExpressionError:
        raise
    except Exception as e:  # sympy's own errors: a domain error, an unsupported operation
        raise ExpressionError(f"{type(e).__name__}: {e}".strip()[:300]) from None


# -- the worker ---------------------------------------------------------------------------------
def serve(memory_mb: int = 1024) -> None:
    """The worker's loop: one JSON request per line in, one JSON result per line out."""
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import sympy  # noqa: F401 - imported once, before the first request

    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            expr = json.loads(line)["expression"]
            out = {"ok": True, "result": evaluate_expression(expr)}
        except ExpressionError as e:
            out = {"ok": False, "error": str(e)}
        except MemoryError:
            out = {"ok": False, "error": "MemoryError: the computation ran out of memory"}
        except Exception as e:
            out = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class Calculator:
    """Evaluates expressions in a resource-limited worker process, ``timeout`` seconds each."""

    def __init__(self, timeout: float = 5.0, memory_mb: int = 1024) -> None:
        self.timeout = timeout
        self.memory_mb = memory_mb
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        root = str(Path(__file__).resolve().parents[3])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        code = f"from synth.stages.tools.calculator import serve; serve({self.memory_mb})"
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        if self._readline(proc, 60.0) is None:  # sympy's import
            proc.kill()
            raise RuntimeError("the calculator worker did not start")
        return proc

    @staticmethod
    def _readline(proc: subprocess.Popen, timeout: float) -> str | None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = proc.stdout.readline()
        return line or None

    def evaluate(self, expression: Any) -> tuple[bool, str]:
        """(True, result) or (False, why it failed); a refused expression never reaches the worker."""
        try:
            parse(expression)
        except ExpressionError as e:
            return False, str(e)
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps({"expression": expression}) + "\n")
                proc.stdin.flush()
            except BrokenPipeError:
                self._kill()
                return False, "the calculator worker died"
            line = self._readline(proc, self.timeout)
            if line is None:
                self._kill()
                return False, f"TimeoutError: the computation ran longer than {self.timeout:g}s"
            out = json.loads(line)
            return (True, out["result"]) if out["ok"] else (False, out["error"])

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
                self._kill()
