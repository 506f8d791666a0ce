"""The code stages' rules, each on known inputs: extraction, ruff, the test harness and the
translation harness (both in the real sandbox); the typed items through the store; an unusable reply
kept as an ``Unparsed`` row."""

from __future__ import annotations

import pytest
from conftest import ScriptedEngine

from sandboxes import Job, Limits
from synth.engines.base import SamplingParams
from synth.pipeline import Run
from synth.records import Message, Unparsed
from synth.stages.code.common import cut_to_sentence
from synth.stages.code.execute import Execute, classify
from synth.stages.code.extract import extract_code, split_repair
from synth.stages.code.items import Attempt, Candidate, IOCase, Problem
from synth.stages.code.problems import WriteProblems, parse_problem, read_corpus
from synth.stages.code.static import ruff_check, verdict
from synth.stages.code.translate import classify_translation, translation_job
from synth.stages.code.unittests import build_test_script
from synth.stages.execute import Sandbox

SANDBOX = Sandbox()
ADD = "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("Sure!\n```python\ndef f(x):\n    return x\n```\nDone.", "python", "def f(x):\n    return x\n"),
        ("```py\ndef f(x):\n    return x", "python", "def f(x):\n    return x\n"),  # unclosed fence
        ("```\nx = 1\n```", "python", "x = 1\n"),
        ("```js\nlet a = 1;\n```\n```python\nb = 2\n```", "python", "b = 2\n"),  # the tagged block wins
        ("Here you go:\ndef f(x):\n    return x\n\nThis returns x.", "python", "def f(x):\n    return x\n"),
        ("I do not know how to do that.", "python", None),
        ("```javascript\nfunction f() {}\n```", "python", None),
        ("```js\nfunction f() { return 1; }\n```", "javascript", "function f() { return 1; }\n"),
        ("<?php\nfunction f() { return 1; }", "php", "<?php\nfunction f() { return 1; }\n"),
    ],
)
def test_extract_code(text, lang, expected):
    assert extract_code(text, lang) == expected


def test_split_repair_sorts_solution_and_tests():
    both = "Fixed:\n```python\ndef f():\n    return 1\n```\n```python\n# tests\nassert f() == 1\n```"
    assert split_repair(both) == ("def f():\n    return 1\n", "# tests\nassert f() == 1\n")
    assert split_repair("```python\nfrom solution import f\nassert f() == 2\n```") == (
        None,
        "from solution import f\nassert f() == 2\n",
    )
    assert split_repair("no idea") == (None, None)


def test_ruff_findings_and_verdicts():
    found = ruff_check(["def f(:\n    pass\n", "import os\n\ndef g():\n    return y\n", "import os\n", ADD])
    assert [verdict(f) for f in found] == ["syntax_error", "lint", None, None]
    assert {f.code for f in found[1]} == {"F401", "F821"}
    assert "F821 Undefined name `y`" in found[1][1].render()


def test_problem_parsing():
    text = (
        "Problem: Write a function `total(xs)` that returns the sum of a list. Example: total([1, 2]) is 3."
    )
    assert parse_problem(text) == (text.removeprefix("Problem: "), None)
    assert parse_problem("ok") == (None, "too_short")
    assert parse_problem("Problem: Write", "length") == (None, "no_problem")
    cut, _ = parse_problem(text + " The list may be empty and then the", "length")
    assert cut.endswith("is 3.")
    assert cut_to_sentence("One. Two and") == "One."


def test_shipped_corpus_reads_and_runs():
    snippets = list(read_corpus("pipelines/data/code_corpus"))
    assert len(snippets) >= 8 and len({s.id for s in snippets}) == len(snippets)
    assert all(verdict(f) is None for f in ruff_check([s.code for s in snippets]))


def test_a_missing_corpus_fails_before_any_file_is_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_corpus(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no .py files"):
        read_corpus(tmp_path)


def run_tests(tests: str, code: str = ADD, timeout_s: float = 10):
    script, reason, feedback = build_test_script(tests, code)
    if script is None:
        return reason
    job = Job(
        files={"solution.py": code, "test_solution.py": script},
        language="python",
        entry="test_solution.py",
        limits=Limits(timeout_s=timeout_s),
    )
    return classify(SANDBOX.run([job])[0]) or "passed"


@pytest.mark.parametrize(
    ("tests", "expected"),
    [
        ("assert add(1, 2) == 3\n", "passed"),
        ("from solution import add\nassert add(1, 2) == 4\n", "test_failed"),
        ("def test_add():\n    assert add(2, 2) == 5\n", "test_failed"),  # test_* functions are called
        ("def check():\n    assert add(1, 2) == 3\n", "weak_tests"),  # never called: no assertion ran
        ("def add(a, b):\n    return a - b\nassert add(1, 2) == 3\n", "passed"),  # its own copy is dropped
        ("print(add(1, 2))\n", "weak_tests"),
        ("assert 1 + 1 == 2\n", "weak_tests"),  # never calls the solution
        ("assert add(1, undefined) == 3\n", "runtime_error"),
        ("assert add(1, 2 == 3\n", "tests_syntax_error"),
        ("while True:\n    assert add(1, 1) == 2\n", "timeout"),
        (
            "import unittest\nclass T(unittest.TestCase):\n    def test_a(self):\n"
            "        self.assertEqual(add(1, 2), 4)\nif __name__ == '__main__':\n    unittest.main()\n",
            "test_failed",
        ),
        (
            "import unittest\nclass T(unittest.TestCase):\n    def test_a(self):\n"
            "        self.assertEqual(add(1, 2), 3)\nunittest.main()\n",
            "passed",
        ),
    ],
)
def test_harness_verdicts(tests, expected):
    assert run_tests(tests, timeout_s=2) == expected


def test_tests_run_against_the_solution_not_their_own_copy():
    buggy = "def add(a, b):\n    return a - b\n"
    assert run_tests("def add(a, b):\n    return a + b\nassert add(1, 2) == 3\n", code=buggy) == "test_failed"


CASES = [IOCase(fn="add_all", args=[[1, 2, 3]], result=6), IOCase(fn="half", args=[3], result=1.5)]
JS_OK = "function addAll(xs) { return xs.reduce((a, b) => a + b, 0); }\nconst half = (x) => x / 2;\n"
PHP_OK = "<?php\nfunction add_all($xs) { return array_sum($xs); }\nfunction half($x) { return $x / 2; }\n"


@pytest.mark.parametrize(
    ("lang", "code", "expected"),
    [
        ("javascript", JS_OK, None),  # camelCase names are found too
        ("javascript", JS_OK.replace("x / 2", "x / 3"), "wrong_output"),
        ("javascript", "function addAll(xs) { return 6; }\n", "missing_function"),
        ("javascript", "function addAll(xs {", "load_error"),
        ("php", PHP_OK, None),
        ("php", PHP_OK.replace("<?php\n", ""), None),  # the opening tag is added
        ("php", PHP_OK.replace("$x / 2", "intdiv($x, 2)"), "wrong_output"),
        ("php", "<?php\nfunction add_all($xs) { return 6; }\n", "missing_function"),
    ],
)
def test_translation_harness(lang, code, expected):
    res = SANDBOX.run([translation_job(code, lang, CASES, SANDBOX.limits)])[0]
    assert classify_translation(res) == expected, res.stderr


def test_cpp_has_no_translation_harness():
    with pytest.raises(ValueError, match="no translation harness"):
        translation_job("int main() {}", "cpp", CASES, SANDBOX.limits)


def candidate(cid: str, code: str | None, tests: str | None) -> Candidate:
    return Candidate(id=cid, problem_id="p", snippet_id="s", problem="p", code=code, tests=tests)


def test_execute_reasons_and_feedback():
    cands = [
        candidate("ok", ADD, "assert add(1, 2) == 3\n"),
        candidate("nocode", None, None),
        candidate("notests", ADD, None),
        candidate("lint", "def f():\n    return undefined_name\n", "assert f() == 1\n"),
        candidate("fail", "import os\n\n" + ADD, "assert add(1, 2) == 4\n"),
    ]
    stage = Execute(sandbox=SANDBOX, repair_round=0)
    assert stage.name == "execute_round0"
    out = {c.id: c for c in stage(cands)}
    assert [out[i].verdicts[-1].reason for i in out] == [None, "no_code", "no_tests", "lint", "test_failed"]
    assert out["ok"].kept and out["ok"].attempts == [
        Attempt(repair_round=0, code=ADD, tests="assert add(1, 2) == 3\n", passed=True, reason=None,
                feedback="", lint=[]),
    ]  # fmt: skip
    assert out["ok"].last_run["status"] == "ok" and out["nocode"].last_run is None
    assert "F821 Undefined name `undefined_name`" in out["lint"].attempts[0].feedback
    fb = out["fail"].attempts[0].feedback
    assert "AssertionError" in fb and "assert add(1, 2) == 4" in fb and "F401" in fb


def test_typed_items_round_trip_through_the_store(tmp_path):
    cand = candidate("c1", ADD, "assert add(1, 2) == 3\n")
    cand.attempts.append(
        Attempt(repair_round=0, code=ADD, tests=None, passed=False, reason="no_tests", lint=["x"])
    )
    cand.keep("execute_round0")
    run = Run(tmp_path / "run")
    run.source("candidates", [cand])
    [back] = run.store.records("candidates")
    run.close()
    assert isinstance(back, Candidate) and back == cand
    assert isinstance(back.attempts[0], Attempt) and back.attempts[0].reason == "no_tests"
    assert back.group_key == "p"  # grouped stages see a problem's candidates together


def test_a_problem_stands_for_its_chat_prompt():
    prob = Problem(id="s-p0", snippet_id="s", problem="Write `f()` returning 1.")
    assert prob.as_prompt() == [Message(role="user", content="Write `f()` returning 1.")]


def test_an_unusable_reply_is_stored_as_unparsed(tmp_path):
    [snippet] = read_corpus("pipelines/data/code_corpus", limit=1)
    run = Run(tmp_path / "run")
    snippets = run.source("snippets", [snippet])
    engine = ScriptedEngine(lambda msgs, j, sampling: ["ok", "Problem: " + "word " * 9 + "."][j])
    problems = run.map(WriteProblems(engine=engine, sampling=SamplingParams(n=2)), snippets)
    rows = {r.id: r for r in run.store.records(problems.stages[0])}
    run.close()
    bad, good = rows[f"{snippet.id}-p0"], rows[f"{snippet.id}-p1"]
    assert isinstance(bad, Unparsed) and not bad.kept
    assert (bad.raw, bad.input_id, bad.verdicts[-1].reason) == ("ok", snippet.id, "too_short")
    assert bad.provenance.template == "code/problem" and bad.provenance.source == snippet.path
    assert isinstance(good, Problem) and good.kept and good.snippet_id == snippet.id
