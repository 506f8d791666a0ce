"""`synth run math`: problem files at the boundary, every filter of the funnel with its reason, the
three exported configs and the data card, kill -9 / resume, `synth eval math`, and the whole recipe
on the embedded model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.cli import main
from synth.io import InputError
from synth.recipe import run_recipe
from synth.recipes.math import MathConfig
from synth.stages.math.evaluate import HELDOUT, evaluate_math, evaluate_to
from synth.stages.math.items import MathProblem
from synth.stages.math.problems import champ_problems, read_problems
from synth.stages.math.steps import prefix_savings
from synth.store import Store

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SYNTH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
PROBLEMS = [
    {"id": "p1", "problem": "What is 3 + 4?", "answer": "7"},
    {"id": "p2", "problem": "What is 5 + 5?", "answer": 10},
]
GOLD = {"What is 3 + 4?": 7, "What is 5 + 5?": 10}


def scripted(msgs, j, sampling):
    """Replies by what is asked, covering every path: problem writing, solutions right (one with a
    bad step), wrong and answerless, code whose printed output the continuation reads back, rollouts
    that depend on the prefix, the step judge, and corrections."""
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    last = msgs[-1]["content"]
    user = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
    gold = GOLD.get(user)
    if system.startswith("You write short"):
        return (
            "Problem: A farmer has 3 cows and buys 4 more. How many cows?"
            if "3 + 4" in last
            else "Problem: hi"
        )
    if "Score: N" in system:  # the step judge: doubts any step that "checks"
        return (
            "Score: 2\nRationale: unsure."
            if "Check" in last.split("Last step:")[-1]
            else "Score: 9\nRationale: ok."
        )
    if msgs[-1]["role"] == "assistant":  # a continuation: code output read back, or a rollout
        outputs = re.findall(r"```output\n(.*?)\n```", last, re.S)
        if outputs:
            return f"Step 2: The program printed {outputs[-1]}.\nThe answer is \\boxed{{{outputs[-1]}}}."
        if "oops" in last:
            return "so the answer is \\boxed{9}."
        return f"The answer is \\boxed{{{gold}}}." if gold is not None else f"The answer is \\boxed{{{j}}}."
    if "Python" in system:
        a, b = re.findall(r"\d+", user)[:2] if gold is not None else (j, 1)
        return f"Step 1: add them.\n```python\nprint({a} + {b})\n```\n"
    if "attempted solution" in last:
        problem = last.split("\n\nHere is")[0]
        return f"Step 1: add again.\nThe answer is \\boxed{{{GOLD.get(problem, 0)}}}."
    if gold is None:  # a synthetic problem: four different answers, no majority
        return f"Step 1: guess.\nThe answer is \\boxed{{{j + 1}}}."
    return [
        f"Step 1: add the numbers.\nStep 2: Check: it is {gold}.\nThe answer is \\boxed{{{gold}}}.",
        f"Step 1: 3 + 4 = 9 (oops).\nStep 2: no, it is {gold}.\nThe answer is \\boxed{{{gold}}}.",
        f"Step 1: add.\nStep 2: so {gold + 1}.\nThe answer is \\boxed{{{gold + 1}}}.",
        "I do not know.",
    ][j % 4]


@pytest.fixture
def problems(tmp_path) -> Path:
    p = tmp_path / "problems.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS))
    return p


def test_problem_files_are_checked_at_the_boundary(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "problem": "What is 1 + 1?", "answer": "2"}\n'
        '{"id": "b", "problem": "What is 2 + 2?"}\n'
        '{"id": "c", "problem": "What is 3 + 3?", "answer": "dollars"}\n'
        '{"id": "a", "problem": "Again?", "answer": 1}\n'
        '{"id": "d", "problem": "Typo?", "answr": 1}\n'
    )
    with pytest.raises(InputError, match=f"{re.escape(str(bad))}:2: field 'answer'"):
        list(read_problems(bad))
    quarantined = []
    rows = list(read_problems(bad, skip_invalid=True, on_bad=quarantined.append))
    assert [r.id for r in rows] == ["a"] and rows[0].answer == "2"
    assert [(q.line, q.field) for q in quarantined] == [
        (2, "answer"),
        (3, "answer"),
        (4, "<row>"),
        (5, "answer"),
    ]
    assert "states no value" in quarantined[1].error and "duplicate id" in quarantined[2].error


def test_a_bad_problem_file_stops_synth_run_math_with_file_line_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "problem": "What is 1 + 1?", "answer": "2"}\n{"id": "b", "problem": 3, "answer": 1}\n'
    )
    assert main(["run", "math", "--problems", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert f"{bad}:2: field 'problem'" in capsys.readouterr().err


def test_the_champ_set_ships_answers_the_grader_can_compare():
    rows = list(champ_problems())
    assert len(rows) == 202 and len({r.id for r in rows}) == 202
    assert all(r.answer and r.problem and r.meta["reference_solution"] for r in rows)
    by_id = {r.id: r for r in rows}
    assert by_id["P_Combinatorics_1"].answer == "239"
    assert "P_Sequence_24" not in by_id  # "The sequence does not exist": prose, not gradable
    assert [r.id for r in read_problems("champ", limit=3)] == [r.id for r in rows[:3]]


def test_every_filter_shows_its_reason_and_every_output_exports(problems, tmp_path, scripted_engine):
    scripted_engine.reply = scripted
    cfg = MathConfig(problems=str(problems), out=str(tmp_path / "run"), k=4, code_k=1, code_rounds=1,
                     rollouts=2, step_judge=True, grade_workers=1, batch_size=4)  # fmt: skip
    run = run_recipe("math", cfg, scripted_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    assert funnel["write_problems"]["reasons"] == {"too_short": 1}
    assert funnel["vote"]["reasons"] == {"low_agreement": 5}  # the synthetic problem: 1, 2, 3, 4, code
    assert funnel["grade"]["reasons"] == {"wrong_answer": 2, "no_answer": 2}
    assert funnel["grade"]["kept"] == 6  # per problem: 2 right CoT solutions + the code one
    # p1's first solution: the judge doubts a step the rollouts found good; the second has a bad step
    assert funnel["verify_steps"]["reasons"] == {"bad_step": 2, "disagreement": 2}
    assert funnel["verify_steps"]["kept"] == 2  # the code solutions: the output read back is right
    assert funnel["grade_corrections"]["kept"] == 2
    out = run.store.get_meta("outputs")
    assert out == {"sft": ["verify_steps", "error_correction"], "preference": ["preference_pairs"],
                   "step_labels": ["step_labels"], "prompts": "problems"}  # fmt: skip
    code = next(r for r in run.store.iter_records("verify_steps", kept=True) if r.id == "p2-c0")
    assert "```output\n10\n```" in code.response and code.response.endswith("\\boxed{10}.")
    bad = next(r for r in run.store.iter_records("verify_steps") if r.id == "p1-s1")
    assert bad.meta["labels"] == [False, True] and bad.meta["first_bad_step"] == 0
    labels = {r.id: r for r in run.store.iter_records("step_labels")}
    wrong = labels["p1-s2-steps"]  # an incorrect solution, labelled for the process reward model
    assert (
        wrong.labels == [True, False] and wrong.completions[1] == "Step 2: so 8.\nThe answer is \\boxed{8}."
    )
    (pair,) = [p for p in run.store.iter_records("preference_pairs") if p.meta["prompt_id"] == "p2"]
    assert "\\boxed{10}" in pair.chosen.content and pair.meta["rejected_reason"] == "wrong_answer"
    fix = next(run.store.iter_records("error_correction"))
    assert (
        "Here is an attempted solution" in fix.messages[0].content
        and "not correct" in fix.messages[0].content
    )
    sharing = run.store.get_meta("prefix_sharing")
    counted = prefix_savings(list(run.store.iter_records("rollouts")), 2)  # the same sum, in memory
    assert sharing["rollout_prompt_tokens"] == counted["rollout_prompt_tokens"] > 0
    assert sharing["prefix_tokens_to_compute"] == counted["prefix_tokens_to_compute"]
    total, need = sharing["rollout_prompt_tokens"], sharing["prefix_tokens_to_compute"]
    assert sharing["shared_prefix_tokens"] == total - need
    run.close()

    assert main(["export", str(tmp_path / "run"), "--to", str(tmp_path / "ds"), "--test-fraction", "0"]) == 0
    from synth.export import load_export

    card = (tmp_path / "ds" / "README.md").read_text()
    assert "config_name: step_labels" in card and "It has 3 configs" in card and "bad_step" in card
    steps = load_export(tmp_path / "ds", "step_labels")["train"]
    assert len(steps) == len([r for r in labels.values() if r.kept])
    assert set(steps.column_names) >= {"prompt", "completions", "labels", "soft_labels"}
    assert len(load_export(tmp_path / "ds", "sft")["train"]) == 4  # 2 verified + 2 corrections


def test_synth_stats_lists_the_reasons(problems, tmp_path, scripted_engine, capsys):
    scripted_engine.reply = scripted
    cfg = MathConfig(problems=str(problems), out=str(tmp_path / "run"), k=4, code_k=0, synthetic_per_seed=0,
                     rollouts=1, corrections_per_problem=0, grade_workers=1)  # fmt: skip
    run_recipe("math", cfg, scripted_engine).close()
    capsys.readouterr()  # the run's progress bars
    assert main(["stats", str(tmp_path / "run"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    reasons = {f["stage"]: f["reasons"] for f in summary["funnel"]}
    assert reasons["grade"] == {"wrong_answer": 2, "no_answer": 2} and reasons["verify_steps"] == {
        "bad_step": 2
    }
    assert summary["rows"] == {"sft": 2, "preference": 2, "step_labels": 6}
    assert summary["data_sources"][0]["name"] == "problems"


# -- kill -9 and resume -----------------------------------------------------------------------------
def _events(run: Path) -> list[dict]:
    p = run / "events.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.endswith("}")] if p.exists() else []


def _snapshot(run: Path) -> dict:
    store = Store(run, read_only=True)
    try:
        rows = store.query("SELECT stage, key, kept, data FROM records ORDER BY stage, seq")
        return {"rows": rows, "outputs": store.get_meta("outputs"), "outcomes": store.get_meta("outcomes")}
    finally:
        store.close()


def test_killed_runs_resume_to_the_same_rows(problems, tmp_path, scripted_engine):
    from openai_server import OpenAIServer

    scripted_engine.reply = scripted
    with OpenAIServer(engine=scripted_engine) as srv:

        def args(out: Path) -> list[str]:
            return [sys.executable, "-m", "pipelines.cli", "run", "math", "--problems", str(problems),
                    "--out", str(out), "--engine", "openai", "--model", "fake", "--base-url", srv.base_url,
                    "--k", "4", "--code-k", "1", "--code-rounds", "1", "--rollouts", "2", "--batch-size", "2",
                    "--grade-workers", "1", "--step-judge"]  # fmt: skip

        reference = tmp_path / "reference"
        subprocess.run(args(reference), env=ENV, check=True, capture_output=True, timeout=600)
        out = tmp_path / "killed"
        points = [  # each comes before the run could finish: every kill is real
            lambda evs: sum(e.get("stage") == "solve" and e["event"] == "batch_committed" for e in evs) >= 2,
            lambda evs: any(e.get("stage") == "code_run_0" and e["event"] == "stage_done" for e in evs),
            lambda evs: any(e.get("stage") == "rollouts" and e["event"] == "batch_committed" for e in evs),
        ]
        for point in points:
            before = len(_events(out))
            proc = subprocess.Popen(args(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 300
            while proc.poll() is None and time.time() < deadline and not point(_events(out)[before:]):
                time.sleep(0.02)
            assert proc.poll() is None, "the run finished before its kill point"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        subprocess.run(args(out), env=ENV, check=True, capture_output=True, timeout=600)
    snap = _snapshot(reference)
    assert {"step_judge", "verify_steps", "step_labels", "error_correction"} <= {r[0] for r in snap["rows"]}
    assert _snapshot(out) == snap
    done = [(e["stage"], e["batch"]) for e in _events(out) if e["event"] == "batch_committed"]
    assert len(done) == len(set(done)), "a finished batch was committed twice"


# -- evaluation ---------------------------------------------------------------------------------------
def test_evaluate_math_greedy_pass_and_majority(scripted_engine):
    def reply(msgs, j, sampling):
        gold = GOLD.get(msgs[-1]["content"])
        if sampling.temperature == 0:
            return f"The answer is \\boxed{{{gold}}}." if gold == 7 else "no idea"
        return f"\\boxed{{{gold if j == 0 else gold + 1}}}"  # right once, then the same wrong answer

    scripted_engine.reply = reply
    r = evaluate_math(scripted_engine, PROBLEMS, k=3, workers=1, per_problem=True)
    assert (r["problems"], r["greedy_accuracy"], r["greedy_no_answer"]) == (2, 0.5, 0.5)
    assert (r["pass@1"], r["pass@3"], r["maj@3"]) == (0.3333, 1.0, 0.0)
    assert r["per_problem"][0] == {"id": "p1", "answer": "7", "greedy_correct": True, "greedy_extracted": "7",
                                   "correct": 1, "majority": "8"}  # fmt: skip
    assert isinstance(MathProblem(id="x", problem="What?", answer="1"), MathProblem)


def test_evaluate_to_writes_the_metrics_a_round_shows(tmp_path, scripted_engine):
    scripted_engine.reply = lambda msgs, j, sampling: f"\\boxed{{{GOLD.get(msgs[-1]['content'], 0)}}}"
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS))
    r = evaluate_to(tmp_path / "eval_math", scripted_engine, data, k=2, limit=1, workers=1)
    assert (r["problems"], r["greedy_accuracy"], r["pass@2"], r["maj@2"]) == (1, 1.0, 1.0, 1.0)
    saved = json.loads((tmp_path / "eval_math" / "metrics.json").read_text())
    assert "per_problem" not in r and saved["data"] == str(data)
    assert saved["per_problem"] == [{"id": "p1", "answer": "7", "greedy_correct": True,
                                     "greedy_extracted": "7", "correct": 2, "majority": "7"}]  # fmt: skip
    assert len(list(read_problems(HELDOUT))) == 12  # the default held-out set reads


@pytest.mark.slow
def test_synth_eval_math_on_the_embedded_model(tmp_path, capsys):
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS))
    out = tmp_path / "metrics.json"
    assert main(["eval", "math", "--data", str(data), "--k", "2", "--max-tokens", "32", "--workers", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["model"] == "SmolLM2-135M-Instruct" and printed["problems"] == 2
    for key in ("greedy_accuracy", "pass@1", "pass@2", "maj@2"):
        assert 0.0 <= printed[key] <= 1.0
    assert len(json.loads(out.read_text())["per_problem"]) == 2


# -- the embedded model, end to end -------------------------------------------------------------------
@pytest.mark.slow
def test_synth_run_math_on_the_embedded_model(problems, tmp_path, hf_engine, capsys):
    """Every stage on the real 135M model (the step judge, ~15 s a step here, is left to the scripted
    runs); its yield is whatever it is, the mechanics must hold: each filter in the funnel with its
    reasons, three configs and a card."""
    cfg = MathConfig(problems=str(problems), out=str(tmp_path / "run"), limit=1, k=2, code_k=1,
                     code_rounds=1, max_tokens=40, rollouts=2, rollout_max_tokens=16, grade_workers=1,
                     batch_size=8)  # fmt: skip
    run = run_recipe("math", cfg, hf_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    assert list(funnel)[:4] == ["problems", "write_problems", "solve", "solve_code"]
    assert {"vote", "grade", "rollouts", "verify_steps", "step_labels", "preference_pairs"} <= set(funnel)
    assert funnel["solve"]["kept"] + funnel["solve"]["rejected"] == 2 * funnel["solve"]["rows_in"]
    graded = funnel["grade"]["kept"] + funnel["grade"]["rejected"]
    assert graded == funnel["vote"]["kept"]
    assert set(funnel["grade"]["reasons"]) <= {"wrong_answer", "no_answer", "timeout"}
    verified = funnel["verify_steps"]
    assert verified["kept"] + verified["rejected"] == funnel["grade"]["kept"]  # one row per correct one
    assert set(verified["reasons"]) <= {"bad_step"} and not funnel["step_labels"]["reasons"]
    for sol in run.store.iter_records("code_continue_0"):
        if sol.executions:
            assert "```output\n" in sol.text  # the sandbox's output is in the reasoning
    for step in run.store.iter_records("rollouts"):
        assert step.terminal or len(step.outcomes) == 2
    outcomes = run.store.get_meta("outcomes")
    assert outcomes["solutions graded"] == graded and outcomes["step-verified sft"] == verified["kept"]
    run.close()
    capsys.readouterr()
    assert main(["stats", str(tmp_path / "run"), "--json"]) == 0
    stats = {f["stage"]: f["reasons"] for f in json.loads(capsys.readouterr().out)["funnel"]}
    assert stats["grade"] == funnel["grade"]["reasons"] and stats["verify_steps"] == verified["reasons"]
    assert main(["export", str(tmp_path / "run"), "--to", str(tmp_path / "ds")]) == 0
    card = (tmp_path / "ds" / "README.md").read_text()
    assert all(f"config_name: {c}" in card for c in ("sft", "preference", "step_labels"))
    from synth.export import load_export

    def rows(config: str) -> int:
        return sum(len(split) for split in load_export(tmp_path / "ds", config).values())

    assert rows("step_labels") == funnel["step_labels"]["kept"]
    assert rows("sft") == verified["kept"] + funnel["error_correction"]["kept"]
    assert rows("preference") == funnel["preference_pairs"]["kept"]
