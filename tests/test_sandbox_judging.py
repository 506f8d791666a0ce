"""The sandbox as a judge: correct solutions pass their tests, buggy ones fail, in every language."""

from __future__ import annotations

import shutil
import time

import pytest

from sandboxes import Job, Limits, run, run_many

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

# problem -> (test script, correct solution, buggy solution); tests import `solution`.
PROBLEMS = {
    "fizzbuzz": (
        """
from solution import fizzbuzz
out = fizzbuzz(15)
assert len(out) == 15, out
assert out[:5] == ["1", "2", "Fizz", "4", "Buzz"], out
assert out[14] == "FizzBuzz" and out[9] == "Buzz" and out[8] == "Fizz", out
""",
        """
def fizzbuzz(n):
    out = []
    for i in range(1, n + 1):
        word = ("Fizz" if i % 3 == 0 else "") + ("Buzz" if i % 5 == 0 else "")
        out.append(word or str(i))
    return out
""",
        """
def fizzbuzz(n):
    return ["Fizz" if i % 3 == 0 else "Buzz" if i % 5 == 0 else str(i) for i in range(1, n + 1)]
""",
    ),
    "palindrome": (
        """
from solution import is_palindrome
assert is_palindrome("A man, a plan, a canal: Panama")
assert is_palindrome("")
assert not is_palindrome("race a car")
assert is_palindrome("No 'x' in Nixon")
""",
        """
def is_palindrome(s):
    chars = [c.lower() for c in s if c.isalnum()]
    return chars == chars[::-1]
""",
        """
def is_palindrome(s):
    chars = [c for c in s if c.isalnum()]
    return chars == chars[::-1]
""",
    ),
    "two_sum": (
        """
from solution import two_sum
assert sorted(two_sum([2, 7, 11, 15], 9)) == [0, 1]
assert sorted(two_sum([3, 2, 4], 6)) == [1, 2]
assert sorted(two_sum([3, 3], 6)) == [0, 1]
""",
        """
def two_sum(nums, target):
    seen = {}
    for i, x in enumerate(nums):
        if target - x in seen:
            return [seen[target - x], i]
        seen[x] = i
""",
        """
def two_sum(nums, target):
    for i, x in enumerate(nums):
        for j, y in enumerate(nums):
            if x + y == target:
                return [i, j]
""",
    ),
    "run_length": (
        """
from solution import encode
assert encode("aaabccdddd") == "a3b1c2d4", encode("aaabccdddd")
assert encode("") == ""
assert encode("z") == "z1"
""",
        """
def encode(s):
    out, i = [], 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(f"{s[i]}{j - i}")
        i = j
    return "".join(out)
""",
        """
def encode(s):
    out, count = [], 1
    for a, b in zip(s, s[1:]):
        if a == b:
            count += 1
        else:
            out.append(f"{a}{count}")
            count = 1
    return "".join(out)
""",
    ),
}


def python_job(problem: str, correct: bool) -> Job:
    tests, good, bad = PROBLEMS[problem]
    return Job(
        files={"solution.py": good if correct else bad, "test_solution.py": tests},
        language="python",
        entry="test_solution.py",
        limits=Limits(timeout_s=10, memory_mb=256),
    )


def test_python_solutions_are_judged_correctly_in_a_batch() -> None:
    cases = [(p, correct) for p in PROBLEMS for correct in (True, False)]
    results = run_many([python_job(p, correct) for p, correct in cases], max_workers=2)
    assert len(results) == len(cases)
    for (problem, correct), result in zip(cases, results, strict=True):
        assert result.passed is correct, (problem, correct, result.to_dict())
        if not correct:
            assert result.exit_code == 1 and "AssertionError" in result.stderr, problem


def test_run_many_accepts_dicts_and_keeps_order() -> None:
    jobs = [{"command": ["/bin/sh", "-c", f"sleep 0.{9 - i}; echo {i}"]} for i in range(6)]
    results = run_many(jobs, max_workers=3)
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(6)]


def test_run_many_runs_concurrently() -> None:
    jobs = [Job(command=["/bin/sleep", "1"]) for _ in range(4)]
    started = time.monotonic()
    results = run_many(jobs, max_workers=4)
    assert all(r.passed for r in results)
    assert time.monotonic() - started < 3.0  # serial would take 4 s


def test_run_many_reports_a_broken_job_without_failing_the_batch() -> None:
    results = run_many([Job(command=["/does/not/exist"]), Job(command=["/bin/true"])])
    assert results[0].status == "failed" and results[0].exit_code != 0
    assert results[1].passed


def test_stdin_is_fed_to_the_program() -> None:
    src = "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))\n"
    result = run({"sum.py": src}, language="python", entry="sum.py", stdin="1 2 3\n4 5\n")
    assert result.passed and result.stdout == "15\n"


JS_SOLUTION = "module.exports = (a, b) => a + b;\n"
JS_BUGGY = "module.exports = (a, b) => a - b;\n"
JS_TEST = """
const assert = require("assert");
const add = require("./solution.js");
assert.strictEqual(add(2, 3), 5);
console.log("hello from node");
"""


@pytest.mark.parametrize(("solution", "passes"), [(JS_SOLUTION, True), (JS_BUGGY, False)])
def test_javascript(solution: str, passes: bool) -> None:
    files = {"solution.js": solution, "test.js": JS_TEST}
    result = run(files, language="javascript", entry="test.js")
    assert result.passed is passes, result.to_dict()
    if passes:
        assert result.stdout == "hello from node\n"
    else:
        assert "AssertionError" in result.stderr


def test_javascript_heap_exhaustion_is_oom() -> None:
    src = "const a = []; while (true) a.push(new Array(1e6).fill(1.5));\n"
    result = run({"bomb.js": src}, language="javascript", entry="bomb.js", limits=Limits(memory_mb=128))
    assert result.oom and not result.passed


PHP_TEST = """<?php
require __DIR__ . '/solution.php';
if (reverse_words("hello big world") !== "world big hello") { fwrite(STDERR, "wrong\\n"); exit(1); }
assert(reverse_words("a") === "a");
echo "hello from php\\n";
"""
PHP_SOLUTION = "<?php function reverse_words($s) { return implode(' ', array_reverse(explode(' ', $s))); }\n"
PHP_BUGGY = "<?php function reverse_words($s) { return strrev($s); }\n"


@pytest.mark.skipif(shutil.which("php") is None, reason="php-cli not installed")
@pytest.mark.parametrize(("solution", "passes"), [(PHP_SOLUTION, True), (PHP_BUGGY, False)])
def test_php(solution: str, passes: bool) -> None:
    result = run({"solution.php": solution, "test.php": PHP_TEST}, language="php", entry="test.php")
    assert result.passed is passes, result.to_dict()
    assert (result.stdout == "hello from php\n") is passes
    if not passes:
        assert "wrong" in result.stderr


@pytest.mark.skipif(shutil.which("php") is None, reason="php-cli not installed")
def test_php_failed_assert_fails_the_run() -> None:
    result = run({"t.php": "<?php assert(1 + 1 === 3); echo 'unreachable';"}, language="php", entry="t.php")
    assert not result.passed and "AssertionError" in result.stderr and result.stdout == ""


CPP_TEST = """
#include <cassert>
#include <iostream>
#include "solution.hpp"
int main() {
    assert(gcd(12, 18) == 6);
    assert(gcd(17, 5) == 1);
    std::cout << "hello from c++" << std::endl;
    return 0;
}
"""
CPP_SOLUTION = "long gcd(long a, long b) { while (b) { long t = a % b; a = b; b = t; } return a; }\n"
CPP_BUGGY = "long gcd(long a, long b) { return a < b ? a : b; }\n"


@pytest.mark.parametrize(("solution", "passes"), [(CPP_SOLUTION, True), (CPP_BUGGY, False)])
def test_cpp(solution: str, passes: bool) -> None:
    result = run({"solution.hpp": solution, "test.cpp": CPP_TEST}, language="cpp", entry="test.cpp")
    assert not result.compile_error, result.stderr
    assert result.compile_wall_s is not None and result.compile_wall_s > 0
    assert result.passed is passes, result.to_dict()
    if passes:
        assert result.stdout == "hello from c++\n"
    else:
        assert result.exit_code == 128 + 6 and "Assertion" in result.stderr  # abort()


def test_cpp_compile_error_is_reported_as_such() -> None:
    result = run({"main.cpp": "int main() { return undeclared; }\n"}, language="cpp", entry="main.cpp")
    assert result.compile_error and result.status == "compile_error" and not result.passed
    assert "undeclared" in result.stderr and "error" in result.stderr


def test_cpp_program_reads_stdin_and_cannot_escape() -> None:
    src = """
#include <fstream>
#include <iostream>
int main() {
    long a, b; std::cin >> a >> b;
    std::ofstream f("/etc/pwned");
    std::cout << a * b << (f ? " escaped" : " contained") << std::endl;
}
"""
    result = run({"main.cpp": src}, language="cpp", entry="main.cpp", stdin="6 7")
    assert result.passed and result.stdout == "42 contained\n"
