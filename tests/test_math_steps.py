"""Step verification: how solutions split into steps, hard and soft labels, rollouts that continue the
solution (an assistant prefix the engine extends), and the verifier against known truth (the
benchmark's generated problems: an engine that continues by the arithmetic localises every corrupted
step; the embedded model runs the same rig)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from synth.engines.base import Request, SamplingParams
from synth.stages.math.grading import GraderPool
from synth.stages.math.items import MathSolution
from synth.stages.math.steps import (
    StepVerifier,
    label_steps,
    prefix_savings,
    rollout_messages,
    split_steps,
    step_prefixes,
)

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("step_verifier", ROOT / "benchmarks" / "step_verifier.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("step_verifier", mod)  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pool():
    with GraderPool(workers=1) as p:
        yield p


def test_marked_steps_keep_their_continuation_lines_code_and_answer():
    text = (
        "Let me think.\nStep 1: 3 * 4 = 12.\nthat is the area.\n\nStep 2: compute\n```python\n"
        "print(12 + 5)\n\nx = 1\n```\n```output\n17\n```\nStep 3: so 17.\nThe answer is \\boxed{17}.\n"
    )
    assert split_steps(text) == [
        "Let me think.",
        "Step 1: 3 * 4 = 12.\nthat is the area.",
        "Step 2: compute\n```python\nprint(12 + 5)\n\nx = 1\n```\n```output\n17\n```",
        "Step 3: so 17.\nThe answer is \\boxed{17}.",
    ]


def test_unmarked_lines_are_steps_and_the_answer_line_joins_the_last():
    assert split_steps("First 2 + 2 = 4.\n\nThen 4 * 3 = 12.\nSo the answer is 12.") == [
        "First 2 + 2 = 4.",
        "Then 4 * 3 = 12.\nSo the answer is 12.",
    ]
    assert split_steps("\\boxed{5}") == ["\\boxed{5}"]
    many = "\n".join(f"Step {i}: {i} + 1 = {i + 1}." for i in range(1, 12))
    steps = split_steps(many, max_steps=4)
    assert len(steps) == 4 and steps[3].startswith("Step 4") and steps[3].endswith("Step 11: 11 + 1 = 12.")


def _sol(text: str, correct: bool = True) -> MathSolution:
    return MathSolution(id="p-s0", problem_id="p", problem="What is 2 + 2 + 3?", answer="7", text=text,
                        correct=correct, extracted="7" if correct else "8")  # fmt: skip


def test_rollouts_continue_the_solution_from_the_end_of_each_step():
    steps = step_prefixes(_sol("Step 1: 2 + 2 = 4.\nStep 2: 4 + 3 = 7.\nThe answer is \\boxed{7}."), 8)
    assert [s.terminal for s in steps] == [False, True]
    msgs = rollout_messages(steps[0])
    assert msgs[-1] == {"role": "assistant", "content": "Step 1: 2 + 2 = 4.\n"}
    assert msgs[-2] == {"role": "user", "content": "What is 2 + 2 + 3?"}
    assert Request.chat(msgs).continues and not Request.chat(msgs[:-1]).continues


def test_hard_and_soft_labels_and_the_terminal_step():
    steps = step_prefixes(_sol("Step 1: a\nStep 2: b\nStep 3: c\nThe answer is 7.", correct=False), 8)
    steps[0].outcomes, steps[0].scores["step_soft"] = [True, False, False, False], 0.25
    steps[1].outcomes, steps[1].scores["step_soft"] = [False, False, False, False], 0.0
    hard = label_steps(steps)
    assert (hard.good, hard.soft, hard.first_bad) == ([True, False, False], [0.25, 0.0, 0.0], 1)
    soft = label_steps(steps, mode="soft", soft_threshold=0.5)
    assert soft.good == [False, False, False] and soft.first_bad == 0
    steps[0].scores["step_judge"], steps[1].scores["step_judge"], steps[2].scores["step_judge"] = (
        9.0,
        2.0,
        1.0,
    )
    assert label_steps(steps, judge_threshold=5.0).agree
    steps[1].scores["step_judge"] = 8.0
    assert not label_steps(steps, judge_threshold=5.0).agree


def test_prefix_savings_count_each_solutions_longest_prompt_once():
    a = step_prefixes(_sol("Step 1: a\nStep 2: b\nStep 3: c\nThe answer is 7."), 8)
    b = step_prefixes(_sol("Step 1: a\nStep 2: d\nThe answer is 7.").model_copy(update={"id": "p-s1"}), 8)
    for s, tokens in zip(a + b, [100, 120, 140, 90, 95], strict=True):
        s.prompt_tokens = tokens  # the terminal steps' (140, 95) are never asked
    assert [s.solution_id for s in a + b] == ["p-s0"] * 3 + ["p-s1"] * 2
    assert prefix_savings(a + b, n=4) == {
        "rollout_prompt_tokens": (100 + 120 + 90) * 4,
        "prefix_tokens_to_compute": 120 + 90,
    }


def test_known_truth_an_arithmetic_oracle_localises_every_corrupted_step(pool):
    bench = _bench()
    problems = bench.make_problems(10, steps=4, seed=3)
    for p in problems:  # the generator's own truth
        assert p.corrupted[: p.bad] == p.steps[: p.bad] and p.corrupted[p.bad] != p.steps[p.bad]
        assert str(p.answer) in p.steps[-1] and str(p.answer) not in p.corrupted[-1].split("boxed")[-1]
    r = bench.evaluate(bench.OracleEngine(), problems, rollouts=2, max_tokens=32, temperature=0.7, seed=0)
    assert (r["exact"], r["flagged"], r["false_alarm_before"], r["false_alarm_clean"], r["clean_pass"]) == (
        1.0, 1.0, 0.0, 0.0, 1.0,
    )  # fmt: skip


def test_the_verifier_sees_what_the_engine_returns(pool, scripted_engine):
    """A verifier is only as good as its rollouts: an engine that never reaches the answer flags
    every step, one that always does flags none."""
    sampling = SamplingParams(n=3, temperature=0.7, max_tokens=16)
    item = (
        "What is 2 + 2 + 3?",
        ["Step 1: 2 + 2 = 4.", "Step 2: 4 + 3 = 7.\nThe answer is \\boxed{7}."],
        "7",
        True,
    )
    scripted_engine.reply = lambda msgs, j, s: "The answer is \\boxed{9}."
    assert StepVerifier(scripted_engine, sampling, pool).label([item])[0].good == [False, True]
    scripted_engine.reply = lambda msgs, j, s: (
        "so 4 + 3 = 7. The answer is \\boxed{7}." if j == 2 else "no idea"
    )
    verifier = StepVerifier(scripted_engine, sampling, pool)
    labels = verifier.label([item])[0]
    assert labels.good == [True, True] and labels.soft == [pytest.approx(0.3333, abs=1e-3), 1.0]
    # one step rolled out, 3 samples of a 5-token prompt (the scripted engine's count): 15, 5 computed
    assert (verifier.rollout_prompt_tokens, verifier.prefix_tokens_to_compute) == (15, 5)
    assert StepVerifier(scripted_engine, sampling, pool, mode="soft").label([item])[0].good == [False, True]
    assert scripted_engine.calls[-1] == 1  # one request per non-terminal step, its n samples in one call


@pytest.mark.slow
def test_the_embedded_model_continues_a_prefix_and_labels_known_truth(hf_engine, pool):
    prefix = [
        {"role": "user", "content": "What is 2 + 3 + 4?"},
        {"role": "assistant", "content": "Step 1: 2 + 3 ="},
    ]
    rendered = hf_engine._render(Request.chat(prefix))
    assert rendered.endswith("<|im_start|>assistant\nStep 1: 2 + 3 =")  # continued, not a new turn
    (reply,) = hf_engine.generate([Request.chat(prefix)], SamplingParams(n=1, temperature=0.0, max_tokens=8))
    assert reply[0].text.strip()
    bench = _bench()
    problems = bench.make_problems(1, steps=3, seed=1)
    r = bench.evaluate(hf_engine, problems, rollouts=2, max_tokens=24, temperature=0.7, seed=0)
    for clean, corrupt, _bad in r["labels"]:  # the figures are the model's; the mechanics are checked
        assert len(clean) == len(corrupt) == 3 and clean[-1] is True and corrupt[-1] is False
    assert 0.0 <= r["exact"] <= r["flagged"] <= 1.0
