"""The math grader: every answer form models write, normalisation (fractions, percent, units, dollars,
thousands separators), wrong answers that look right, time-outs on huge expressions (math-verify's
own and the pool's hard deadline), and `synth grade math` on a file."""

from __future__ import annotations

import json
import time

import pytest

from pipelines.cli import main
from synth.stages.math.grading import GraderPool, equivalent, extract_answer, grade, majority, normalize


@pytest.mark.parametrize(
    "text, answer, form",
    [
        ("Step 1: 2 + 2 = 4.\nThe answer is \\boxed{4}.", "4", "boxed"),
        ("so x = \\boxed{\\frac{1}{2}} and we are done", "\\frac{1}{2}", "boxed"),
        ("first \\boxed{3}, then corrected: \\boxed{5}", "5", "boxed"),
        ("nested \\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}", "boxed"),
        ("Natalia sold 48 clips in April.\n#### 72", "72", "hashes"),
        ("Thus, the final answer is 42.", "42", "answer_is"),
        ("The answer is: $1,000$.", "$1,000$", "answer_is"),
        ("The answer is 3.5. It is a decimal.", "3.5", "answer_is"),
        ("The answer is 42, which is even.", "42", "answer_is"),
        ("The answer is (2, 3).", "(2, 3)", "answer_is"),
        ("Answer: 17 apples", "17 apples", "answer_is"),
        ("Q: How many?\nA: 15", "15", "a_colon"),
        ("She has 3 apples, buys 4, so 7 in all", "7", "last_number"),
        ("we get x = \\frac{7}{2}", "\\frac{7}{2}", "last_number"),
    ],
)
def test_every_answer_form_is_found(text, answer, form):
    assert extract_answer(text) == (answer, form)


def test_no_answer_at_all():
    assert extract_answer("I do not know how to solve this.") is None
    g = grade("I do not know how to solve this.", "3")
    assert (g.correct, g.extracted, g.reason) == (False, None, "no_answer")


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("$\\$1,234.50$", "1234.50"),
        ("1{,}000", "1000"),
        ("12 apples", "12"),
        ("5 \\text{ cm}", "5"),
        ("4.5 km/h", "4.5"),
        ("50%", "50\\%"),
        ("25 percent", "25\\%"),
        ("90^\\circ", "90"),
        ("\\dfrac{3}{4}", "\\frac{3}{4}"),
        ("approximately 3.14", "3.14"),
        ("376 and 625", "376 and 625"),  # "and 625" is not a unit
        ("x = 5", "x = 5"),
        ("$", ""),
    ],
)
def test_normalisation(raw, normal):
    assert normalize(raw) == normal


@pytest.mark.parametrize(
    "solution, gold",
    [
        ("The answer is \\boxed{\\frac{1}{2}}.", "0.5"),
        ("The answer is \\boxed{0.5}.", "\\frac{1}{2}"),
        ("The answer is $\\dfrac{6}{8}$.", "3/4"),
        ("#### 1,000,000", "1000000"),
        ("The total is $\\$12.50$. The answer is \\$12.50.", "12.5"),
        ("The answer is 12.50 dollars.", "12.5"),
        ("The answer is 50%.", "50"),
        ("The answer is 25%.", "0.25"),
        ("A: 5 cm", "5"),
        ("The answer is 7 apples.", "7"),
        ("\\boxed{x = 3}", "3"),
        ("\\boxed{3}", "x = 3"),
        ("\\boxed{2 + 2 = 4}", "4"),
        ("\\boxed{\\pm 3}", "3, -3"),
        ("\\boxed{2^{n-1}}", "2^(n-1)"),
        ("\\boxed{n(n+1)2^{n-2}}", "n(n+1)*2^(n-2)"),
        ("The answer is \\boxed{\\sqrt{2}/2}.", "\\frac{\\sqrt{2}}{2}"),
        ("The answer is 0.333333", "1/3"),
        ("\\boxed{x = \\pm 3}", "\\pm 3"),
        ("\\boxed{x = 3 \\text{ or } x = -3}", "\\pm 3"),
        ("A: \\$1,234.00", "1234"),
        ("The answer is 3/4.", "\\frac{3}{4}"),
        ("\\boxed{5 - 2}", "3"),
        ("\\boxed{3 = x}", "3"),
    ],
)
def test_equivalent_answers_are_right(solution, gold):
    g = grade(solution, gold)
    assert g.correct and g.reason is None, g


@pytest.mark.parametrize(
    "solution, gold",
    [
        ("\\boxed{-3}", "3"),  # sign error
        ("\\boxed{3}", "-3"),
        ("\\boxed{x = -3}", "x = 3"),
        ("\\boxed{\\pm 3}", "3"),  # +- is two answers, not one
        ("\\boxed{3}", "\\pm 3"),
        ("\\boxed{x + 4 = 7}", "7"),  # one side of an equation is not the value of x
        ("\\boxed{x + 4 = 7}", "3"),
        ("\\boxed{y = 2x - 3}", "y = 2x + 3"),
        ("\\boxed{\\frac{2}{1}}", "\\frac{1}{2}"),  # the fraction upside down
        ("The answer is 1,000,000.", "1000"),
        ("The answer is 3.0001", "3"),
        ("The answer is 0.5%.", "0.5"),  # half a percent is not a half
        ("#### 12345678901234568", "12345678901234567"),  # beyond float precision, still exact
        ("The answer is (2, 1).", "(1, 2)"),
        ("\\boxed{-\\frac{1}{2}}", "\\frac{1}{2}"),  # sign errors in other dress
        ("The answer is -\\$5.", "5"),
        ("\\boxed{-(-3)}", "-3"),
        ("\\boxed{x = \\pm 3}", "3"),  # a root named, with its twin
        ("\\boxed{2x = 6}", "6"),  # the equation's right side is not the value of x
        ("\\boxed{2x = 6}", "3"),
        ("\\boxed{x^2 - 9 = 0}", "3"),  # the equation restated, not solved
        ("\\boxed{x + 4}", "7"),
        ("\\boxed{3 = x}", "-3"),
        ("\\boxed{7 = x + 4}", "7"),  # one side of an equation, the other way round
    ],
)
def test_wrong_answers_that_look_right_are_wrong(solution, gold):
    g = grade(solution, gold)
    assert not g.correct and g.reason == "wrong_answer", g


def test_the_fast_path_for_plain_numbers_agrees_with_math_verify():
    """Plain numbers skip the parser; they must be judged exactly as math-verify judges them."""
    import itertools

    from math_verify import parse, verify

    from synth.stages.math.grading import _plain_numbers

    values = ["50", "50\\%", "0.5", "0.5\\%", "\\frac{1}{2}", "1/2", "-0.5", "9", "9\\%", "0.09", "7.0", "7"]
    decided = 0
    for gold, answer in itertools.product(values, values):
        fast = _plain_numbers(gold, answer)
        if fast is not None:
            decided += 1
            assert fast == verify(parse(f"${gold}$"), parse(f"${answer}$")), (gold, answer)
    assert decided == len(values) ** 2


def test_extraction_stays_fast_on_pathological_text():
    """Extraction runs in the calling process, without a timeout: it must stay linear."""
    texts = [
        "\\boxed{" * 100_000,  # a hundred thousand unclosed boxes
        "The answer is " + "a " * 100_000 + "!",
        ("The answer is 1 " + "b" * 50 + "!\n") * 10_000,
        "\\boxed{" + "1 " * 50_000 + "apples}",
    ]
    start = time.monotonic()
    for text in texts:
        found = extract_answer(text)
        if found:
            normalize(found[0])
    assert time.monotonic() - start < 20


def test_math_verify_gives_up_on_a_huge_expression_in_time():
    start = time.monotonic()
    g = grade("The answer is \\boxed{\\frac{10^{10^{8}}}{3}}.", "3", timeout=1)
    assert (g.correct, g.reason) == (False, "timeout")
    assert time.monotonic() - start < 15


def test_pool_grades_in_order_and_one_pathological_row_does_not_stall_the_rest():
    rows = [(f"The answer is {i}.", str(i if i % 3 else i + 1)) for i in range(60)]
    rows[7] = ("\\boxed{\\frac{10^{10^{8}}}{3}}", "3")  # math-verify would work on it for 5 s
    rows[31] = ("\\boxed{2^{2^{34}} \\cdot 3}", "5")
    # a hard deadline below math-verify's own timeout: the pool kills the stuck workers
    with GraderPool(workers=2, timeout=5, deadline=1.0) as pool:
        pool.grade(rows[:2])  # workers started
        start = time.monotonic()
        grades = pool.grade(rows)
        took = time.monotonic() - start
        assert pool.killed >= 2
        assert pool.grade([("\\boxed{4}", "4")])[0].correct  # replaced workers still grade
    assert took < 20
    assert [g.reason for g in (grades[7], grades[31])] == ["timeout", "timeout"]
    expected = [i % 3 != 0 for i in range(60)]
    assert [g.correct for i, g in enumerate(grades) if i not in (7, 31)] == [
        e for i, e in enumerate(expected) if i not in (7, 31)
    ]
    assert grades[1].extracted == "1" and grades[1].form == "answer_is"


@pytest.fixture(scope="module")
def pool():
    with GraderPool(workers=1) as p:
        yield p


def test_pool_and_in_process_grading_agree(pool):
    cases = [
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("The answer is 50%.", "0.5"),
        ("#### -7", "7"),
        ("no answer here", "1"),
        ("\\boxed{x + 1 = 2}", "1"),
    ]
    assert pool.grade(cases) == [grade(s, g) for s, g in cases]


def test_majority_counts_equivalent_answers_together(pool):
    assert majority(["1/2", "3", "3 apples", None]) == ("3", 2)  # without a comparer: by normal form
    assert majority(["1/2", "0.5", "3", None, "\\frac{1}{2}"], pool.compare) == ("1/2", 3)
    assert majority([None, ""]) == (None, 0)
    assert equivalent("1/2", "0.5")


def test_synth_grade_math_prints_one_line_per_row_and_a_summary(tmp_path, capsys):
    f = tmp_path / "out.jsonl"
    rows = [
        {"id": "a", "answer": "7", "solution": "3 + 4 = 7. The answer is \\boxed{7}."},
        {"id": 2, "answer": 0.5, "solution": "The answer is $\\frac{1}{2}$."},
        {"id": "c", "answer": "3", "solution": "\\boxed{-3}"},
        {"id": "d", "answer": "3", "solution": "I give up."},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["grade", "math", str(f), "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines == [
        {"id": "a", "correct": True, "extracted": "7"},
        {"id": 2, "correct": True, "extracted": "$\\frac{1}{2}$"},
        {"id": "c", "correct": False, "extracted": "-3"},
        {"id": "d", "correct": False, "extracted": None},
    ]
    summary = json.loads(err.strip().splitlines()[-1])
    assert (summary["rows"], summary["correct"], summary["accuracy"], summary["no_answer"]) == (4, 2, 0.5, 1)


def test_synth_grade_math_names_file_line_and_field_of_a_bad_row(tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"id": "a", "answer": "1", "solution": "1"}\n{"id": "b", "solution": "2"}\n')
    assert main(["grade", "math", str(f)]) == 2
    assert f"{f}:2: field 'answer'" in capsys.readouterr().err
    assert main(["grade", "math", str(f), "--skip-invalid", "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and json.loads(err.strip().splitlines()[-1])["invalid_rows"] == 1


def test_synth_grade_math_times_out_a_huge_expression_and_grades_the_rest(tmp_path, capsys):
    f = tmp_path / "out.jsonl"
    rows = [
        {"id": "huge", "answer": "3", "solution": "The answer is \\boxed{\\frac{10^{10^{8}}}{3}}."},
        *({"id": i, "answer": str(i), "solution": f"so \\boxed{{{i}}}"} for i in range(6)),
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    start = time.monotonic()
    assert main(["grade", "math", str(f), "--workers", "2", "--timeout", "1"]) == 0
    assert time.monotonic() - start < 30
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines[0] == {"id": "huge", "correct": False, "extracted": "\\frac{10^{10^{8}}}{3}"}
    assert [x["correct"] for x in lines[1:]] == [True] * 6
    summary = json.loads(err.strip().splitlines()[-1])
    assert (summary["rows"], summary["correct"], summary["timeout"]) == (7, 6, 1)
