"""Proof that every test ran: a harness prints an unguessable per-run token (the sentinel) after its last
assertion, and a run that exits 0 without it is not a pass ('exited_early'), in every language the
project runs tests in: Python solutions with their tests, and the JavaScript / PHP translation harnesses.
"""

from __future__ import annotations

import shutil

import pytest

from sandboxes import Job, run
from sandboxes.base import new_sentinel
from synth.stages.code.execute import Execute, classify, describe
from synth.stages.code.items import Candidate, IOCase
from synth.stages.code.outcome import PreferencePairs
from synth.stages.code.translate import classify_translation, translation_job
from synth.stages.execute import Sandbox

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

SANDBOX = Sandbox()
RIGHT = "def double(x):\n    return x * 2\n"
WRONG = "def double(x):\n    return x * 3\n"
TESTS = "assert double(3) == 6\nassert double(-2) == -4\n"
UNITTEST_TESTS = """import unittest

class T(unittest.TestCase):
    def test_d(self):
        self.assertEqual(double(3), 6)

if __name__ == "__main__":
    unittest.main()
"""
MAIN_EXIT_TESTS = """import sys

def test_d():
    assert double(3) == 6

if __name__ == "__main__":
    test_d()
    print("all passed")
    sys.exit(0)
"""


def test_a_clean_exit_without_the_sentinel_is_incomplete_and_the_sentinel_is_stripped():
    token = new_sentinel()
    assert token != new_sentinel() and len(token) >= 32
    echo = "import sys\ntok = sys.stdin.readline().strip()\nprint('hello')\nprint(tok)\n"
    ok = run({"m.py": echo}, language="python", entry="m.py", stdin=token + "\n", sentinel=token)
    assert ok.status == "ok" and ok.passed and not ok.incomplete
    assert ok.stdout == "hello\n"  # the token never reaches anyone who reads the output
    quiet = run({"m.py": "print('hello')\n"}, language="python", entry="m.py", stdin=token, sentinel=token)
    assert quiet.status == "incomplete" and not quiet.passed and quiet.to_dict()["status"] == "incomplete"
    # a program cannot print a token it was not given
    guess = run({"m.py": f"print({new_sentinel()!r})\n"}, language="python", entry="m.py", sentinel=token)
    assert guess.status == "incomplete"
    failed = run({"m.py": "raise SystemExit(3)\n"}, language="python", entry="m.py", sentinel=token)
    assert failed.status == "failed"  # a non-zero exit explains itself
    with pytest.raises(ValueError, match="sentinel"):
        Job(files={"m.py": ""}, language="python", entry="m.py", sentinel="OK")


def cand(cid: str, code: str, tests: str) -> Candidate:
    return Candidate(id=cid, problem_id="p", snippet_id="s", problem="p", code=code, tests=tests)


def test_python_early_exits_fail_and_correct_programs_still_pass():
    cands = [
        cand("right", RIGHT, TESTS),
        cand("right_unittest", RIGHT, UNITTEST_TESTS),
        # a final successful exit after every assertion ran is harmless: the harness drops it
        cand("right_trailing_exit", RIGHT, "import sys\n\n" + TESTS + "sys.exit(0)\n"),
        cand("right_main_exit", RIGHT, MAIN_EXIT_TESTS),
        cand("tests_exit_first", WRONG, "import sys\n\nsys.exit(0)\n" + TESTS),
        cand(
            "tests_exit_in_test",
            WRONG,
            "import os\n\ndef test_d():\n    os._exit(0)\n    assert double(3) == 6\n",
        ),
        cand("solution_sys_exit", "import sys\n\n" + WRONG + "\nsys.exit(0)\n", TESTS),
        cand("solution_raise", WRONG + "\nraise SystemExit\n", TESTS),
        cand("solution_os_exit", "import os\n\n" + WRONG + "\nos._exit(0)\n", TESTS),
        cand("solution_exit_in_call", "import sys\n\n\ndef double(x):\n    sys.exit(0)\n", TESTS),
    ]
    out = {c.id: c for c in Execute(sandbox=SANDBOX, repair_round=0)(cands)}
    reasons = {i: c.attempts[-1].reason for i, c in out.items()}
    assert reasons == {
        "right": None, "right_unittest": None, "right_trailing_exit": None, "right_main_exit": None,
        "tests_exit_first": "exited_early", "tests_exit_in_test": "exited_early",
        "solution_sys_exit": "exited_early", "solution_raise": "exited_early",
        "solution_os_exit": "exited_early", "solution_exit_in_call": "exited_early",
    }  # fmt: skip
    assert out["right"].kept and not out["solution_os_exit"].kept
    fb = out["solution_sys_exit"].attempts[-1].feedback
    assert "exited before the tests finished" in fb
    assert out["solution_sys_exit"].last_run["status"] == "incomplete"


def test_a_solution_that_exits_early_is_a_confirmed_rejected_response():
    good = cand("good", RIGHT, TESTS)
    good.keep("execute_round0")
    early = cand("early", "import sys\n\n" + WRONG + "\nsys.exit(0)\n", TESTS)
    early.reject("execute_round0", "exited_early")
    [pair] = PreferencePairs(sandbox=SANDBOX)([good, early])
    assert pair.kept and pair.meta["rejected_fails_with"] == "exited_early"


CASES = [IOCase(fn="double", args=[3], result=6), IOCase(fn="double", args=[-2], result=-4)]


@pytest.mark.parametrize(
    ("lang", "code", "expected"),
    [
        ("javascript", "function double(x) {\n  return 2 * x;\n}\n", None),
        ("javascript", "function double(x) {\n  return 3 * x;\n}\nprocess.exit(0);\n", "exited_early"),
        ("javascript", "function double(x) {\n  process.exit(0);\n}\n", "exited_early"),
        ("javascript", "console.log('hi');\nfunction double(x) { return 2 * x; }\n", None),
        ("php", "<?php\nfunction double($x) { return 2 * $x; }\n", None),
        ("php", "<?php\nfunction double($x) { return 3 * $x; }\nexit;\n", "exited_early"),
        ("php", "<?php\nfunction double($x) { exit(0); }\n", "exited_early"),
        ("php", "<?php\nfunction double($x) { return 3 * $x; }\nexit(0);\n", "exited_early"),
    ],
)
def test_translation_harness_early_exits(lang, code, expected):
    job = translation_job(code, lang, CASES, SANDBOX.limits)
    res = SANDBOX.run([job])[0]
    assert classify_translation(res) == expected, (res.status, res.stdout, res.stderr)
    assert job.sentinel and job.sentinel not in res.stdout  # stripped from what is stored and shown
    if expected:
        assert "exited before the tests finished" in describe(res)


def test_python_verdict_names_the_early_exit():
    token = new_sentinel()
    res = run({"t.py": "print('partial')\n"}, language="python", entry="t.py", sentinel=token)
    assert classify(res) == "exited_early"
    assert "partial" in describe(res) and token not in describe(res)


def test_the_sentinel_never_reaches_the_repair_prompt(monkeypatch):
    import synth.stages.code.common as common
    from synth.engines.base import SamplingParams
    from synth.stages.code.repair import Repair

    token = "synth-done-" + "ab" * 16
    monkeypatch.setattr(common, "new_sentinel", lambda: token)
    # the harness finishes (prints the sentinel), then the solution's exit hook fails the run
    late = "import atexit\nimport os\n\n" + RIGHT + "\natexit.register(os._exit, 1)\n"
    early = "import sys\n\n" + WRONG + "\nsys.exit(0)\n"
    out = Execute(sandbox=SANDBOX, repair_round=0)([cand("late", late, TESTS), cand("early", early, TESTS)])
    assert [c.attempts[-1].reason for c in out] == ["runtime_error", "exited_early"]
    repair = Repair(engine=None, sampling=SamplingParams(n=1))  # type: ignore[arg-type]
    prompts = [repair.messages(c)[-1]["content"] for c in out]
    assert all(token not in p and "synth-done-" not in p for p in prompts)
    assert prompts[1].startswith("This failed: the program exited before the tests finished.")
