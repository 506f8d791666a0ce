"""Answer grading: find the final answer a solution states, normalise it, and decide whether it equals
the gold answer by symbolic equivalence (math-verify), each comparison under its own timeout.

The rule, in order:

1. **Extraction** (``extract_answer``), in the forms models actually write, first found wins: the last
   ``\\boxed{...}`` (or ``\\fbox``), the last ``#### ...`` line (GSM8K), the last "the (final) answer
   is ..." / "Answer: ...", the last line starting "A: ...", and as a fallback the last number (a
   LaTeX fraction counts). None of them: ``no_answer``.
2. **Normalisation** (``normalize``): math delimiters, ``\\text{}``, dollar signs and other currency,
   thousands separators (``1,000`` and ``1{,}000``), degree signs, ``\\dfrac``/``\\tfrac``, trailing
   unit words (``12 apples``, ``5 cm``) and leading words (``about 5``) go; ``%`` / "percent" become
   ``\\%`` (50% equals 50 and 0.5, as math-verify compares percentages).
3. **Equivalence** (``equivalent``): equal canonical strings, else math-verify's ``parse`` of both and
   ``verify(gold, answer)`` (numbers within its precision, symbolic simplification, sets, intervals,
   matrices). ``\\pm 3`` is the set {3, -3}, so it does not equal 3. An equation answered with a
   compound left side ("x + 4 = 7") states no value, so it is wrong unless the gold is itself an
   equation (math-verify alone would compare its right side). A single-variable equation ("x = 3",
   or "3 = x") counts as its value.
4. **Timeouts**: math-verify interrupts slow parsing and comparison with ``SIGALRM``; that is a
   ``timeout``. A computation that signal cannot interrupt (a C-level big-integer operation) is the
   pool's job: ``GraderPool`` runs comparisons in worker processes, one at a time each, and kills a
   worker that passes the hard deadline, so one pathological expression never stalls the rest. Each
   worker also runs under an address-space limit (``memory_mb``).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

REASONS = ("no_answer", "wrong_answer", "timeout")


@dataclass(frozen=True)
class Grade:
    """One graded solution: ``reason`` is None when correct, else no_answer / wrong_answer / timeout."""

    correct: bool
    extracted: str | None  # the final answer as the solution states it
    form: str | None  # boxed | hashes | answer_is | a_colon | last_number
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GradeTimeout(Exception):  # noqa: N818 - a verdict, like Reject
    """math-verify gave up on a parse or a comparison (its own signal-based timeout)."""


# -- 1. extraction ------------------------------------------------------------------------------
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed\s+([^\s${}]+)")
_HASHES = re.compile(r"#{4}[ \t]*([^\n#][^\n]*)")
_ANSWER_IS = re.compile(
    r"\b(?:final\s+)?answer\s*(?:is|was|will\s+be|would\s+be|[:=])\s*:?[ \t]*([^\n]+)", re.IGNORECASE
)
_A_COLON = re.compile(r"(?m)^[ \t]*(?:\*\*)?A(?:\*\*)?[ \t]*[:.)][ \t]*([^\n]+)")
_FRAC = r"-?\\[dt]?frac\s*\{[^{}\n]{1,40}\}\s*\{[^{}\n]{1,40}\}"
_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?(?:[ \t]*/[ \t]*\d+(?:\.\d+)?)?[ \t]*\\?%?"
_LAST_NUMBER = re.compile(f"{_FRAC}|{_NUMBER}")
MAX_ANSWER_CHARS = 300  # longer "answers" are paragraphs, not answers
CANDIDATES = 20  # matches of one form tried, from the last


def _balanced(text: str, start: int, limit: int = 4000) -> str | None:
    """The text from ``start`` (just after an opening brace) to its matching closing brace, within
    ``limit`` characters."""
    depth = 1
    for i in range(start, min(len(text), start + limit)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _last_boxed(text: str) -> str | None:
    # from the last one back, a bounded number of tries: a text of a million "\boxed{" stays linear
    for m in list(_BOXED.finditer(text))[-CANDIDATES:][::-1]:
        inner = _balanced(text, m.end())
        if inner is not None and inner.strip():
            return inner
    bare = list(_BOXED_BARE.finditer(text))
    return bare[-1].group(1) if bare else None


def _cut_sentence(value: str) -> str:
    """A value captured to the end of its line, cut at the end of its sentence: the first ``.;!?``
    followed by a space (a decimal point is not), or a comma followed by a word, outside brackets."""
    depth = 0
    in_math = False
    for i, c in enumerate(value):
        nxt = value[i + 1] if i + 1 < len(value) else " "
        if c == "$" and (i == 0 or value[i - 1] != "\\"):
            in_math = not in_math
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0 and not in_math:
            if c in ".;!?" and nxt.isspace():
                return value[:i]
            if c == "," and nxt.isspace() and re.match(r"\s+[A-Za-z]{2,}", value[i + 1 :]):
                return value[:i]
    return value


def extract_answer(text: str) -> tuple[str, str] | None:
    """(the final answer as written, its form) or None. Forms, first found wins: ``boxed``,
    ``hashes`` (#### 42), ``answer_is`` (the answer is 42 / Answer: 42), ``a_colon`` (A: 42),
    ``last_number``."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip(), "boxed"
    for form, pattern in (("hashes", _HASHES), ("answer_is", _ANSWER_IS), ("a_colon", _A_COLON)):
        matches = list(pattern.finditer(text))[-CANDIDATES:]
        for m in reversed(matches):
            value = _cut_sentence(m.group(1)).strip().strip("*").strip()
            if value and len(value) <= MAX_ANSWER_CHARS and normalize(value):
                return value, form
    numbers = list(_LAST_NUMBER.finditer(text))
    if numbers:
        return numbers[-1].group(0).strip(), "last_number"
    return None


# -- 2. normalisation ---------------------------------------------------------------------------
_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")
_SPACES = re.compile(r"\\[,!;: ]|\\quad|\\qquad|~")
_CURRENCY = re.compile(r"\\\$|\$|€|£|¥|\b(?:USD|EUR|GBP|dollars?|cents?|euros?|pounds?)\b", re.IGNORECASE)
_PERCENT_WORD = re.compile(r"\s*\bper\s*cent\b|\s*\bpercent(?:age)?\b", re.IGNORECASE)
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°|\\degree|\bdegrees?\b", re.IGNORECASE)
_LEFT_RIGHT = re.compile(r"\\(?:left|right)\b\s*")
# a value followed by unit words: "12 apples", "5 cm", "4.5 km/h", "98 values"
_UNIT_WORD = r"[A-Za-z]+(?:[./^-][A-Za-z0-9]+)*"
_UNITS = re.compile(rf"^(?P<v>.*?[\d}}%)])\s*(?P<u>{_UNIT_WORD}(?:\s+{_UNIT_WORD})*)$")
_CONNECTIVES = {"and", "or", "to", "by", "times", "plus", "minus", "over"}
_LEAD_WORDS = re.compile(r"^(?:(?:[A-Za-z]{2,}|a)\s+)+(?=[-+\d\\(.])")
_SINGLE_LETTER_UNITS = set("mgslhLkK")


@lru_cache(maxsize=65536)
def normalize(answer: str) -> str:
    """The answer as math-verify should read it (LaTeX without delimiters), or '' when nothing is
    left."""
    s = answer.strip()
    changed = True
    while changed:  # peel nested delimiters: "$\\(5\\)$"
        changed = False
        for left, right in _DELIMS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
                changed = True
    s = _TEXT_CMD.sub(lambda m: " " + m.group(1) + " ", s)
    s = s.replace("{,}", "").replace("\\!", "")
    s = _SPACES.sub(" ", s)
    s = _LEFT_RIGHT.sub("", s)
    s = _CURRENCY.sub("", s)
    s = _DEGREES.sub("", s)
    s = _PERCENT_WORD.sub("\\%", s)
    s = re.sub(r"(?<!\\)%", r"\\%", s)
    s = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = " ".join(s.split()).strip(" .,;:")
    if len(s) > MAX_ANSWER_CHARS:  # a long expression: no unit or lead words to strip (and the
        return s  # patterns that find them backtrack on long text)
    m = _UNITS.match(s)
    if m:
        unit = m.group("u").strip()
        first = unit.split()[0].lower()
        if first not in _CONNECTIVES and (len(unit) > 1 or unit in _SINGLE_LETTER_UNITS):
            s = m.group("v").strip()
    s = _LEAD_WORDS.sub("", s)
    return s.strip(" .,;:")


def _canon(s: str) -> str:
    return "".join(s.split()).lower().replace("{", "").replace("}", "")


# -- 3. equivalence -----------------------------------------------------------------------------
def _seconds(timeout: float) -> int:
    return max(1, math.ceil(timeout))  # signal.alarm counts whole seconds


@lru_cache(maxsize=4096)
def _parse_cached(latex: str, timeout: int) -> tuple:
    return tuple(_parse(latex, timeout))


def _parse(latex: str, timeout: int) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    from math_verify.errors import TimeoutException

    try:
        return parse(
            f"${latex}$",
            extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
            parsing_timeout=timeout,
            raise_on_error=True,
        )
    except TimeoutException:
        raise GradeTimeout(f"parsing {latex[:80]!r}") from None
    except Exception:
        return []


def _states_no_value(parsed: Sequence[Any]) -> bool:
    """An equation whose left side is an expression of unknowns ("x + 4 = 7"), or whose right side is
    when the left is a value ("7 = x + 4"), states no value."""
    from sympy import Eq, Symbol
    from sympy.core.function import AppliedUndef

    def compound(side: Any) -> bool:
        return bool(side.free_symbols) and not isinstance(side, Symbol | AppliedUndef)

    for item in parsed:
        if isinstance(item, Eq):
            return compound(item.lhs) or (not item.lhs.free_symbols and compound(item.rhs))
    return False


def _value_first(parsed: list[Any]) -> list[Any]:
    """A value stated the other way round ("3 = x") as "x = 3", which counts as its right side."""
    from sympy import Eq, Symbol

    out = []
    for item in parsed:
        if isinstance(item, Eq) and isinstance(item.rhs, Symbol) and not item.lhs.free_symbols:
            item = Eq(item.rhs, item.lhs, evaluate=False)
        out.append(item)
    return out


def _is_relational(parsed: Sequence[Any]) -> bool:
    from sympy.core.relational import Relational

    return any(isinstance(item, Relational) for item in parsed)


_PLAIN = re.compile(r"(?P<sign>-?)(?P<num>\d+(?:\.\d+)?|\.\d+)(?:/(?P<den>\d+))?(?P<pct>\\%)?")
_LATEX_FRAC = re.compile(r"(?P<sign>-?)\\frac\{(?P<num>\d+)\}\{(?P<den>\d+)\}(?P<pct>\\%)?")


def _number(s: str) -> tuple[Fraction, bool, bool, bool] | None:
    """A plain number (42, -3.5, 7/2, \\frac{7}{2}, 50\\%): (value, a percentage, an integer
    literal, may be rounded: a decimal of 6+ places), or None."""
    m = _PLAIN.fullmatch(s) or _LATEX_FRAC.fullmatch(s)
    if not m or (m.group("den") is not None and int(m.group("den")) == 0):
        return None
    num, den = m.group("num"), m.group("den")
    value = Fraction(num) / Fraction(den or 1)
    pct = bool(m.group("pct"))
    integer = den is None and "." not in num and s.lstrip("-")[:1].isdigit()
    return (-value if m.group("sign") else value), pct, integer, bool(re.search(r"\.\d{6,}", num))


def _plain_numbers(gold: str, answer: str) -> bool | None:
    """Both plain numbers: compared exactly, without a parser (most answers are), as math-verify
    compares them: a percentage is its value over 100 (50% = 0.5 = 1/2), and an integer percentage
    also equals its integer (9% = 9). None when either is not a plain number, or when a decimal of 6+
    places may be a rounding math-verify accepts."""
    g, a = _number(gold), _number(answer)
    if g is None or a is None:
        return None
    (x, x_pct, x_int, x_round), (y, y_pct, y_int, y_round) = g, a
    if (x / 100 if x_pct else x) == (y / 100 if y_pct else y):
        return True
    if x_pct != y_pct and x_int and y_int and x == y:
        return True
    return None if x_round or y_round else False


def equivalent(gold: str, answer: str, timeout: float = 5.0) -> bool:
    """Whether ``answer`` equals ``gold`` (both as written: they are normalised here). Raises
    ``GradeTimeout`` when math-verify gives up on either."""
    from math_verify import verify
    from math_verify.errors import TimeoutException

    g, a = normalize(gold), normalize(answer)
    if not g or not a:
        return False
    if _canon(g) == _canon(a):
        return True
    fast = _plain_numbers(g, a)
    if fast is not None:
        return fast
    seconds = _seconds(timeout)
    gold_parsed = list(_parse_cached(g, seconds))
    answer_parsed = _parse(a, seconds)
    if not gold_parsed or not answer_parsed:
        return False
    if _states_no_value(answer_parsed) and not _is_relational(gold_parsed):
        return False
    if not _is_relational(gold_parsed):
        answer_parsed = _value_first(answer_parsed)
    try:
        return bool(verify(gold_parsed, answer_parsed, timeout_seconds=seconds, raise_on_error=True))
    except TimeoutException:
        raise GradeTimeout(f"comparing {g[:40]!r} with {a[:40]!r}") from None
    except Exception:
        return False


def grade(solution: str, gold: str, timeout: float = 5.0) -> Grade:
    """Grade one solution against its gold answer, in this process (main thread: math-verify's
    timeouts use SIGALRM). ``GraderPool`` does the same with hard deadlines, in parallel."""
    found = extract_answer(solution)
    if found is None or not normalize(found[0]):
        return Grade(False, found[0] if found else None, found[1] if found else None, "no_answer")
    answer, form = found
    try:
        ok = equivalent(gold, answer, timeout)
    except GradeTimeout:
        return Grade(False, answer, form, "timeout")
    return Grade(ok, answer, form, None if ok else "wrong_answer")


# -- 4. the pool ----------------------------------------------------------------------------------
def serve(memory_mb: int = 0) -> None:
    """A grading worker (``python -m synth.stages.math.grading``): one JSON line per task on stdin,
    ``{"i", "gold", "answer", "timeout"}``, one line back on stdout, ``{"i", "r"}`` with r true, false
    or null (a timeout). Exits when stdin closes."""
    import json
    import logging
    import sys

    if memory_mb:
        import resource

        limit = memory_mb * 1024 * 1024
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit if hard == resource.RLIM_INFINITY else hard))
    logging.disable(logging.WARNING)  # math-verify logs every timeout it handles
    import math_verify  # noqa: F401 - imported before "ready": a task's deadline is its own

    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        task = json.loads(line)
        try:
            result: bool | None = equivalent(task["gold"], task["answer"], task["timeout"])
        except GradeTimeout:
            result = None
        except MemoryError:
            result = False
        out.write(json.dumps({"i": task["i"], "r": result}) + "\n")
        out.flush()


class _Worker:
    """One worker process (a fresh interpreter: nothing of the caller is forked or re-imported)."""

    def __init__(self, memory_mb: int) -> None:
        import subprocess
        import sys
        from pathlib import Path

        root = str(Path(__file__).resolve().parents[3])  # the checkout, for a non-installed tree
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "synth.stages.math.grading", str(memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
        )
        self.ready = False

    @property
    def out(self) -> Any:
        return self.proc.stdout

    def send(self, task: dict[str, Any]) -> None:
        import json

        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


class GraderPool:
    """Comparisons in ``workers`` processes, each comparison under a hard wall-clock deadline.

    ``timeout`` is math-verify's own (per parse and per comparison, whole seconds); a worker that has
    not answered ``deadline`` seconds after it got a task (default: three timeouts and a second) is
    killed and replaced, and that task counts as a timeout. Workers are fresh interpreters started on
    first use (about a second each) and live until ``close``; use the pool as a context manager.
    """

    START_TIMEOUT = 120.0  # a worker's interpreter start and imports, on a loaded machine

    def __init__(
        self,
        workers: int | None = None,
        timeout: float = 5.0,
        memory_mb: int = 2048,
        deadline: float | None = None,
    ) -> None:
        self.size = max(1, workers or min(4, os.cpu_count() or 1))
        self.timeout = timeout
        self.deadline = deadline if deadline is not None else 3 * _seconds(timeout) + 1.0
        self.memory_mb = memory_mb
        self._workers: list[_Worker] = []
        self.killed = 0  # workers killed at their deadline (or found dead)

    def __enter__(self) -> GraderPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        for w in self._workers:
            try:
                if w.proc.stdin is not None:
                    w.proc.stdin.close()  # the worker's loop ends
                w.proc.wait(timeout=2)
            except Exception:
                pass
            w.kill()
        self._workers = []

    def compare(self, pairs: Sequence[tuple[str, str]]) -> list[bool | None]:
        """For each (gold, answer): True / False, or None when it timed out.

        One event loop over the workers' pipes: a worker that answers gets the next task, one past
        its deadline is killed and a fresh one started in its place; a starting worker joins when it
        says it is ready, so a restart never holds up the others."""
        import json
        import selectors

        if not pairs:
            return []
        while len(self._workers) < min(self.size, len(pairs)):
            self._workers.append(_Worker(self.memory_mb))
        results: list[bool | None] = [None] * len(pairs)
        todo = deque(range(len(pairs)))
        busy: dict[_Worker, tuple[int, float]] = {}
        starting: dict[_Worker, float] = {}
        idle: list[_Worker] = []
        with selectors.DefaultSelector() as sel:
            for w in self._workers:
                if w.ready:
                    idle.append(w)
                else:
                    starting[w] = time.monotonic()
                    sel.register(w.out, selectors.EVENT_READ, w)
            while todo or busy:
                while idle and todo:
                    w, i = idle.pop(), todo.popleft()
                    gold, answer = pairs[i]
                    w.send({"i": i, "gold": gold, "answer": answer, "timeout": self.timeout})
                    busy[w] = (i, time.monotonic())
                    sel.register(w.out, selectors.EVENT_READ, w)
                ends = [t + self.deadline for _, t in busy.values()]
                ends += [t + self.START_TIMEOUT for t in starting.values()]
                for key, _ in sel.select(timeout=max(0.0, min(ends) - time.monotonic())):
                    w = key.data
                    sel.unregister(w.out)
                    line = w.out.readline()
                    if w in starting:
                        del starting[w]
                        if not line:
                            raise RuntimeError(f"a grader worker exited at start (exit code {w.proc.poll()})")
                        w.ready = True
                        idle.append(w)
                        continue
                    i, _ = busy.pop(w)
                    if line:
                        results[i] = json.loads(line)["r"]
                        idle.append(w)
                    else:  # died (a crash the address-space limit did not turn into MemoryError)
                        self._restart(w, sel, starting)
                now = time.monotonic()
                for w, (_, t) in list(busy.items()):
                    if now - t > self.deadline:  # its task counts as a timeout (results[i] is None)
                        sel.unregister(w.out)
                        del busy[w]
                        self._restart(w, sel, starting)
                if any(now - t > self.START_TIMEOUT for t in starting.values()):
                    raise RuntimeError("grader workers did not start")
        return results

    def _restart(self, dead: _Worker, sel: Any, starting: dict[_Worker, float]) -> None:
        import selectors

        dead.kill()
        self.killed += 1
        fresh = _Worker(self.memory_mb)
        self._workers[self._workers.index(dead)] = fresh
        starting[fresh] = time.monotonic()
        sel.register(fresh.out, selectors.EVENT_READ, fresh)

    def grade(self, items: Sequence[tuple[str, str]]) -> list[Grade]:
        """For each (solution, gold): its ``Grade``. Extraction runs here (linear regexes, no
        timeout needed); the comparisons run in the workers."""
        raw = [extract_answer(solution) for solution, _gold in items]
        found = [f if f is not None and normalize(f[0]) else None for f in raw]
        asks = [(i, (gold, f[0])) for i, ((_, gold), f) in enumerate(zip(items, found, strict=True)) if f]
        verdicts = dict(zip((i for i, _ in asks), self.compare([p for _, p in asks]), strict=True))
        out = []
        for i, f in enumerate(found):
            if f is None:
                r = raw[i]
                out.append(Grade(False, r[0] if r else None, r[1] if r else None, "no_answer"))
                continue
            ok = verdicts[i]
            reason = "timeout" if ok is None else (None if ok else "wrong_answer")
            out.append(Grade(bool(ok), f[0], f[1], reason))
        return out


def grade_all(
    items: Sequence[tuple[str, str]], pool: GraderPool | None = None, timeout: float = 5.0
) -> list[Grade]:
    """Grades with ``pool``, or in this process when there is none."""
    if pool is not None:
        return pool.grade(items)
    return [grade(solution, gold, timeout) for solution, gold in items]


# -- majority vote ------------------------------------------------------------------------------
def majority(
    answers: Iterable[str | None],
    same: Callable[[list[tuple[str, str]]], list[bool | None]] | None = None,
) -> tuple[str | None, int]:
    """The most common answer (equivalent answers count together) and how many gave it; ties go to
    the answer seen first. ``same`` compares pairs (a pool's ``compare``); without it, answers are
    equal when their normalised forms are."""
    keys: dict[str, list[str]] = {}
    for a in answers:
        if a is None or not normalize(a):
            continue
        keys.setdefault(_canon(normalize(a)), []).append(a)
    groups = list(keys.values())
    if same is not None and len(groups) > 1:
        pairs = [(i, j) for i in range(len(groups)) for j in range(i + 1, len(groups))]
        verdicts = same([(groups[i][0], groups[j][0]) for i, j in pairs])
        parent = list(range(len(groups)))

        def root(x: int) -> int:
            while parent[x] != x:
                x = parent[x]
            return x

        for (i, j), ok in zip(pairs, verdicts, strict=True):
            if ok:
                parent[root(j)] = root(i)
        merged: dict[int, list[str]] = {}
        for i, g in enumerate(groups):
            merged.setdefault(root(i), []).extend(g)
        groups = [merged[k] for k in sorted(merged)]
    if not groups:
        return None, 0
    best = max(groups, key=len)  # max keeps the first of equal lengths
    return best[0], len(best)


if __name__ == "__main__":  # a GraderPool worker
    import sys

    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
