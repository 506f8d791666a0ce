"""`synth eval --suite`: the suite file, each checker shown able to pass and to fail (scripted replies,
known good and known bad), the files a run writes, the CLI, and one run on the real embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ScriptedEngine

from pipelines.eval_cli import SHIPPED_SUITE, compare_md
from synth.evaluate import code, language, long_context, tools
from synth.evaluate.suite import CHECKS, EvalSuite, SuiteError, held_out_prompts, run_suite

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "pipelines" / "data" / "heldout"


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def write_suite(tmp_path: Path, data: dict | str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8"
    )
    return path


# -- the suite file ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"checks": {"poetry": {}}}, "unknown check 'poetry'"),
        ({"checks": {"code": {"limt": 3}}}, "checks.code: unknown key 'limt'"),
        ({"checks": {"math": {}}, "engines": "hf"}, "unknown key 'engines'"),
        ({"checks": {"tools": {"limit": -1}}}, "checks.tools.limit must be in [0, inf), got -1"),
        ({"checks": {"language": {"max_tokens": "many"}}}, "checks.language.max_tokens must be an integer"),
        ({"checks": {"code": {"data": "no/such.jsonl"}}}, "checks.code.data: no such file or folder"),
        ({"checks": {"math": []}}, "checks.math must be a mapping"),
        ({"checks": {}}, "'checks' must map at least one check"),
        ({"checks": {"math": {}}, "engine": "tgi"}, "engine must be one of"),
        ("checks: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "a suite is a mapping"),
    ],
)
def test_suite_file_errors_are_one_line_naming_file_and_key(tmp_path, data, needle):
    path = write_suite(tmp_path, data)
    with pytest.raises(SuiteError) as e:
        EvalSuite.from_yaml(path)
    message = str(e.value)
    assert needle in message
    assert str(path) in message and "\n" not in message


def test_missing_suite_file():
    with pytest.raises(SuiteError, match="suite file not found: nowhere.yaml"):
        EvalSuite.from_yaml("nowhere.yaml")


def test_shipped_suite_and_held_out_prompts():
    suite = EvalSuite.from_yaml(SHIPPED_SUITE)
    assert list(suite.checks) == list(CHECKS)  # every check, in the documented order
    assert suite.model is None and suite.engine == "auto"
    for opts in suite.checks.values():  # relative paths resolved against the project root
        assert Path(opts.data).is_file() and 0 < opts.limit <= 6
    prompts = held_out_prompts(suite)  # every row, whatever the suite's limit
    files = {
        "math": ROOT / "pipelines/data/math/heldout.jsonl",
        "factuality": ROOT / "pipelines/data/factuality/probes.jsonl",
        **{k: HELDOUT / f"{k}.jsonl" for k in ("code", "tools", "language", "long_context")},
    }
    for name, path in files.items():
        assert len(prompts[name]) == len(lines(path)) >= 5, name
        assert all(p.strip() for p in prompts[name])
    marlow = (HELDOUT / "documents" / "greyhaven_lighthouse.md").read_text(encoding="utf-8").strip()
    assert any(marlow in p for p in prompts["long_context"])  # the document is part of the prompt
    assert "Write a Python function `count_vowels(text: str) -> int`" in prompts["code"][0]


# -- each checker passes known-good replies and fails known-bad ones --------------------------------------
def test_code_checker_passes_reference_solutions_and_fails_wrong_ones():
    tasks = code.read_tasks(HELDOUT / "code.jsonl")
    assert len(tasks) == 10 and all(t.solution for t in tasks)
    by_prompt = {code.messages(t)[0]["content"]: t for t in tasks}

    good = ScriptedEngine(
        lambda m, j, s: f"Here it is:\n```python\n{by_prompt[m[-1]['content']].solution}```"
    )
    result = code.evaluate_code(good, tasks)
    assert result["pass@1"] == 1.0 and result["n"] == 10 and result["reasons"] == {}
    assert all(r["passed"] and r["reason"] is None for r in result["results"])

    def wrong(m, j, s):  # the right name and signature, a wrong body
        t = by_prompt[m[-1]["content"]]
        return f"```python\ndef {t.entry_point}(*args, **kwargs):\n    return None\n```"

    result = code.evaluate_code(ScriptedEngine(wrong), tasks)
    assert result["pass@1"] == 0.0 and result["reasons"] == {"test_failed": 10}

    shapes = {  # reply -> the reason the checker gives
        "I cannot write code.": "no_code",
        "```python\ndef count_vowels(text):\n    return (\n": "syntax_error",
        "```python\ndef vowels(text):\n    return 3\n```": "missing_function",
        "```python\ndef count_vowels(text):\n    return 1 / 0\n```": "runtime_error",
        "```python\nimport sys\ndef count_vowels(text):\n    sys.exit(0)\n```": "exited_early",
        "```python\ndef count_vowels(text):\n    while True:\n        pass\n```": "timeout",
    }
    first = tasks[:1] * len(shapes)
    replies = iter(shapes)
    result = code.evaluate_code(ScriptedEngine(lambda m, j, s: next(replies)), first, timeout=2.0)
    assert [r["reason"] for r in result["results"]] == list(shapes.values())
    assert result["pass@1"] == 0.0


def _tool_call(name: str, arguments: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def test_tools_checker_executes_calls_and_can_fail():
    rows = tools.read_questions(HELDOUT / "tools.jsonl")
    assert {"calculator", "search", "python"} <= {
        r.call.name if r.call else "search" if r.match == "contains" else "python" for r in rows
    }
    by_question = {r.question: r for r in rows}

    def good(m, j, s):
        r = by_question[m[-1]["content"]]
        if r.call:  # the expected call, written differently: spacing does not matter
            args = {k: v.replace(" ", "") if isinstance(v, str) else v for k, v in r.call.arguments.items()}
            return f"I will use {r.call.name}.\n" + _tool_call(r.call.name, args)
        if r.match == "contains":  # the question itself as the query: the best passage states it
            return _tool_call("search", {"query": r.question})
        return _tool_call("python", {"code": "print('mississippi'.count('s'))"})

    result = tools.evaluate_tools(ScriptedEngine(good), rows)
    assert result["accuracy"] == result["parse_rate"] == result["execution_rate"] == 1.0
    assert result["n"] == len(rows) == 11
    assert all(r["matched_by"] == "result" for r in result["results"])  # executed, not just matched

    calc = [r for r in rows if r.id == "calc-order-total"]
    bad = {  # reply -> (parsed, executed, reason)
        _tool_call("calculator", {"expression": "17 * 23"}): (True, True, "wrong_result"),
        _tool_call("calculator", {"expression": "__import__('os')"}): (True, False, "execution_error"),
        _tool_call("calculator", {"expr": "17 * 23 + 5"}): (True, False, "schema_violation"),
        _tool_call("wolfram", {"query": "17 * 23 + 5"}): (True, False, "unknown_tool"),
        '<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>': (
            False,
            False,
            "bad_json",
        ),
        "The total is 396 euros.": (False, False, "no_call"),  # right, but no call: not tool use
    }
    replies = iter(bad)
    result = tools.evaluate_tools(ScriptedEngine(lambda m, j, s: next(replies)), calc * len(bad))
    got = [(r["parsed"], r["executed"], r["reason"]) for r in result["results"]]
    assert got == list(bad.values())
    assert result["accuracy"] == 0.0 and result["parse_rate"] == round(4 / 6, 4)


@pytest.mark.parametrize(
    ("output", "answer", "match", "expected"),
    [
        ("396", "396", "equals", True),
        ("617/4 = 154.25", "154.25", "equals", True),
        ("x = 5", "5", "equals", True),
        ("x = -2 or x = 2", "2", "equals", True),
        ("sqrt(2) = 1.41421356237", "1.41", "equals", True),
        ("3960", "396", "equals", False),
        ("The answer is 4\n4", "4", "equals", True),
        ("[1] Marlow Bridge\nIt opened in 1887.", "1887", "contains", True),
        ("[1] Marlow Bridge\nIt opened in 18870.", "1887", "contains", False),
    ],
)
def test_tool_result_matching(output, answer, match, expected):
    assert tools.result_matches(output, answer, match) is expected


def test_language_checker_matches_and_mismatches():
    rows = language.read_prompts(HELDOUT / "language.jsonl")
    assert {r.language for r in rows} == {"en", "de", "fr", "es", "it"} and len(rows) == 10
    echo = language.evaluate_language(ScriptedEngine(lambda m, j, s: m[-1]["content"]), rows)
    assert echo["match_rate"] == 1.0 and echo["abstain_rate"] == 0.0  # each prompt is in its language
    english = "Sure, here is a short and clear answer to your question, written in plain English words."
    result = language.evaluate_language(ScriptedEngine(lambda m, j, s: english), rows)
    assert result["match_rate"] == 0.2 and result["by_language"] == {
        "de": 0.0, "en": 1.0, "es": 0.0, "fr": 0.0, "it": 0.0,
    }  # fmt: skip
    short = language.evaluate_language(ScriptedEngine(lambda m, j, s: "Ja."), rows[:3])
    assert short["match_rate"] == 0.0 and short["abstain_rate"] == 1.0
    assert {r["reason"] for r in short["results"]} == {"too_short_to_identify"}


def test_long_context_checker_right_and_wrong_answers():
    rows = long_context.read_questions(HELDOUT / "long_context.jsonl")
    assert len(rows) == 10 and len({r.document for r in rows[:5]}) == 5  # the first 5: every document
    for r in rows:  # the gold answer is in its document and not given away by the question
        assert r.answered_by(r.context) and not r.answered_by(r.question), r.id

    def right(m, j, s):
        row = next(r for r in rows if f"Question: {r.question}\n" in m[-1]["content"])
        return f"According to the document, {row.answer}."

    assert long_context.evaluate_long_context(ScriptedEngine(right), rows)["accuracy"] == 1.0
    wrong = long_context.evaluate_long_context(ScriptedEngine(lambda m, j, s: "It was 1999, in Paris."), rows)
    assert wrong["accuracy"] == 0.0 and wrong["n"] == 10


def test_math_and_factuality_wrap_the_existing_evaluators():
    from synth.evaluate import factuality
    from synth.evaluate import math as math_check

    problems = math_check.read_problems(ROOT / "pipelines/data/math/heldout.jsonl", limit=4)
    gold = {p.problem: p.answer for p in problems}
    right = ScriptedEngine(
        lambda m, j, s: f"Step 1: done.\nThe answer is \\boxed{{{gold[m[-1]['content']]}}}."
    )
    result = math_check.evaluate_math(right, problems)
    assert result["accuracy"] == 1.0 and result["n"] == 4 and len(result["results"]) == 4
    wrong = math_check.evaluate_math(ScriptedEngine(lambda m, j, s: "The answer is \\boxed{-1}."), problems)
    assert wrong["accuracy"] == 0.0

    probes = factuality.read_probes(ROOT / "pipelines/data/factuality/probes.jsonl", limit=4)
    answers = {p.question: p.answer for p in probes}
    states = ScriptedEngine(lambda m, j, s: f"It is {answers[m[-1]['content']]}.")
    knows = factuality.evaluate_factuality(states, probes)
    assert knows["correct_rate"] == 1.0 and knows["refusal_rate"] == 0.0 and knows["n"] == 4
    refuses = factuality.evaluate_factuality(ScriptedEngine(lambda m, j, s: "I don't know."), probes)
    assert refuses["refusal_rate"] == 1.0 and refuses["correct_rate"] == 0.0


# -- a run: files, headline numbers, the comparison with a previous round ---------------------------------
def test_run_suite_writes_every_file_with_one_engine(tmp_path):
    suite = EvalSuite.from_dict(
        {"checks": {"long_context": {"limit": 3}, "language": {"limit": 2}, "code": {"limit": 2}}},
        source="mini.yaml",
    )
    engine = ScriptedEngine(lambda m, j, s: "Sure, here is a plain English answer to your question today.")
    headline = run_suite(suite, None, tmp_path / "out", engine=engine, limit=2)  # --limit caps each
    assert list(headline) == ["long_context", "language", "code"]
    assert headline["long_context"] == {"accuracy": 0.0, "n": 2}
    assert headline["language"] == {"match_rate": 0.5, "abstain_rate": 0.0, "n": 2}  # en matches, de not
    assert headline["code"] == {"pass@1": 0.0, "n": 2}
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text()) == headline
    for name in headline:
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["check"] == name and metrics["n"] == 2 and "results" not in metrics
        assert metrics["options"]["limit"] == suite.checks[name].limit
        assert len(lines(out / name / "results.jsonl")) == 2
    md = (out / "EVAL.md").read_text()
    assert "| check | metric | value | n |" in md and "| language | match_rate | 0.5000 | 2 |" in md
    assert json.loads((out / "run.json").read_text())["model"] == "scripted-model"


def test_compare_md_shows_previous_value_and_change():
    current = {"math": {"accuracy": 0.5, "n": 10}, "code": {"pass@1": 0.2, "n": 6}}
    first = compare_md(None, current)
    assert "| math | accuracy | - | 0.5000 | - | 10 |" in first
    previous = {"math": {"accuracy": 0.25, "n": 8}, "tools": {"accuracy": 0.1, "n": 6}}
    table = compare_md(previous, current)
    assert table.splitlines()[0] == "| check | metric | previous | current | change | n |"
    assert "| math | accuracy | 0.2500 | 0.5000 | +0.2500 | 10 (was 8) |" in table
    assert "| code | pass@1 | - | 0.2000 | - | 6 |" in table
    assert "| tools | accuracy | 0.1000 | - | - | - |" in table  # a check the new round dropped


# -- the command line -------------------------------------------------------------------------------------
@pytest.fixture
def synth_main(monkeypatch):
    """`synth` with the suite mounted on the `synth eval` group (what pipelines/cli.py will do)."""
    import pipelines.cli as cli
    from pipelines.eval_cli import add_eval_suite
    from pipelines.math_cli import eval_app

    saved = eval_app.registered_callback
    add_eval_suite(eval_app)
    monkeypatch.setattr(cli, "cli", cli.build_cli())
    yield cli.main
    eval_app.registered_callback = saved


def test_cli_help_errors_and_subcommands(synth_main, tmp_path, capsys):
    assert synth_main(["eval", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "--suite" in shown and "--model" in shown and "math" in shown and "factuality" in shown
    assert synth_main(["eval", "math", "--help"]) == 0  # the sub-commands still work
    assert "--data" in capsys.readouterr().out
    assert synth_main(["eval", "factuality", "--help"]) == 0
    assert "--probes" in capsys.readouterr().out

    bad = write_suite(tmp_path, {"checks": {"math": {"top_k": 3}}})
    cases = [
        (["eval", "--suite", str(bad)], f"error: {bad}: checks.math: unknown key 'top_k'"),
        (["eval", "--suite", str(tmp_path / "none.yaml")], "error: suite file not found"),
        (["eval", "--engine", "tgi"], "error: --engine must be one of auto, hf, vllm, openai"),
        (["eval", "--model", "m", "math"], "error: --model before 'math' is an option of the suite run"),
    ]
    for args, message in cases:
        assert synth_main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err, err


@pytest.mark.slow
def test_suite_on_the_real_embedded_model(synth_main, tmp_path, monkeypatch, capsys):
    """Every check on SmolLM2-135M through `synth eval` (small limits): one engine is built, every file
    is written, every number is a share of its n items. The model scores near 0: no score is asserted."""
    import synth.engines

    built = []
    real = synth.engines.get_engine
    monkeypatch.setattr(synth.engines, "get_engine", lambda *a, **k: built.append(a) or real(*a, **k))
    tokens = {"math": 32, "factuality": 12, "code": 48, "tools": 24, "language": 24, "long_context": 12}
    small = {name: {"limit": 2, "max_tokens": n} for name, n in tokens.items()}
    suite = write_suite(tmp_path, {"model": "embedded", "engine": "hf", "checks": small})
    out = tmp_path / "eval"
    assert synth_main(["eval", "--suite", str(suite), "--out", str(out)]) == 0
    assert len(built) == 1 and built[0][0] == "hf"
    assert "synth eval" in capsys.readouterr().out
    headline = json.loads((out / "metrics.json").read_text())
    assert list(headline) == list(small)
    for name, metrics in headline.items():
        assert metrics["n"] == 2
        values = [v for k, v in metrics.items() if k != "n"]
        assert values and all(0.0 <= v <= 1.0 for v in values), (name, metrics)
        items = lines(out / name / "results.jsonl")
        assert len(items) == 2
    assert json.loads((out / "run.json").read_text())["model"] == "SmolLM2-135M-Instruct"
    assert (out / "EVAL.md").read_text().count("\n| ") >= 12
    code_items = lines(out / "code" / "results.jsonl")
    assert all(r["reply"] for r in code_items)  # the model wrote something; the sandbox judged it
    assert all(r["passed"] == (r["reason"] is None) for r in code_items)
