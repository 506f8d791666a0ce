import pytest

from synth.prompts import load_prompt
from synth.records import SFTRecord
from synth.stages.judge import JudgeStage, parse_judgement, question_answer
from synth.stages.select import (
    best_of_k,
    preference_pairs,
    quantile,
    strengths_by_gap,
    top_quantile,
)


def cand(pid, j, text, score=None, finish="stop"):
    r = SFTRecord(
        id=f"{pid}-{j}",
        messages=[{"role": "user", "content": f"question {pid}"}, {"role": "assistant", "content": text}],
        meta={"prompt_id": pid, "finish_reason": finish, "completion_tokens": 7},
    )
    if score is not None:
        r.scores["judge"] = score
    return r


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("Score: 7\nRationale: Good but long.", (7.0, "Good but long.")),
        ("score=10/10 rationale: perfect", (10.0, "perfect")),
        ("I would give it 3 out of 10 because it is vague.", (3.0, "because it is vague.")),
        ("The answer is fine.", None),
        ("Score: 0", None),
    ],
)
def test_parse_judgement(reply, expected):
    assert parse_judgement(reply) == expected


def general_judge(engine, **kw):
    return JudgeStage("judge", engine, load_prompt("general/judge"), question_answer, **kw)


def test_judge_prompt_is_few_shot_chat():
    msgs = load_prompt("general/judge").messages(question="Q?", answer="A.")
    assert msgs[0]["role"] == "system"
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert "Q?" in msgs[-1]["content"] and "A." in msgs[-1]["content"]


def test_llm_judge_writes_scores_and_rejects_unparseable(scripted_engine):
    replies = iter(["Score: 8\nRationale: solid", "no idea"])
    scripted_engine.reply = lambda msgs, j, s: next(replies)
    recs = general_judge(scripted_engine)([cand("a", 0, "x"), cand("a", 1, "y")])
    assert recs[0].scores["judge"] == 8.0 and recs[0].meta["judge_rationale"] == "solid"
    assert not recs[1].kept and recs[1].verdicts[-1].reason == "judge_unparseable"


def test_best_of_k_keeps_one_per_prompt_with_stable_ties():
    recs = [cand("a", 0, "x", 5), cand("a", 1, "y", 9), cand("a", 2, "z", 9), cand("b", 0, "w", 1)]
    best_of_k(recs, "judge")
    assert [r.id for r in recs if r.kept] == ["a-1", "b-0"]
    assert {r.verdicts[-1].reason for r in recs if not r.kept} == {"not_best"}


def test_quantile_matches_numpy_linear():
    assert quantile([1, 2, 3, 4], 0.75) == pytest.approx(3.25)
    assert quantile([5], 0.75) == 5


def test_top_fraction_keeps_ties_and_rejects_rest():
    recs = [cand(str(i), 0, "t", s) for i, s in enumerate([1, 2, 3, 4, 5, 6, 7, 8])]
    top_quantile(recs, "judge", 0.25)
    assert {v.stage for r in recs for v in r.verdicts} == {"top_fraction"}
    assert [r.scores["judge"] for r in recs if r.kept] == [7, 8]
    assert all(r.verdicts[-1].reason == "below_top_quantile" for r in recs if not r.kept)
    ties = [cand(str(i), 0, "t", 4) for i in range(4)]
    assert all(r.kept for r in top_quantile(ties, "judge"))


def test_top_fraction_stage_is_named_for_what_it_does():
    """It keeps whatever fraction it is given (the demo asks 0.5): not 'top_quartile'."""
    from synth.stages.select import TopFraction

    assert TopFraction("judge", 0.5).name == "top_fraction"
    half = [cand(str(i), 0, "t", s) for i, s in enumerate([1, 2, 3, 4])]
    assert [r.kept for r in top_quantile(half, "judge", 0.5)] == [False, False, True, True]


def test_preference_pairs_best_vs_worst():
    recs = [
        cand("a", 0, "meh", 4),
        cand("a", 1, "great", 9),
        cand("a", 2, "bad", 2),
        cand("b", 0, "same", 5),
        cand("b", 1, "other", 5),
        cand("c", 0, "alone", 3),
    ]
    pairs = preference_pairs(recs, "judge")
    assert len(pairs) == 1
    p = pairs[0]
    assert p.chosen.content == "great" and p.rejected.content == "bad"
    assert p.strength == "significantly_better" and p.prompt[0].content == "question a"


def test_strengths_are_gap_quartiles():
    gaps = [0.1, 2.0, 0.5, 1.0, 0.05, 3.0, 0.7, 0.2]
    assert strengths_by_gap(gaps) == [
        "marginally_better", "significantly_better", "slightly_better", "better",
        "marginally_better", "significantly_better", "better", "slightly_better",
    ]  # fmt: skip
    assert strengths_by_gap([0.4]) == ["significantly_better"]


def test_expected_score_is_the_probability_weighted_mean():
    import math

    from synth.stages.judge import SCORE_CHOICES, expected_score

    dist = {c: -math.inf for c in SCORE_CHOICES} | {" 2": math.log(0.25), " 8": math.log(0.75)}
    assert expected_score(dist) == pytest.approx(6.5)


def test_judge_prefers_the_distribution_when_the_engine_has_one(scripted_engine):
    import math

    from synth.stages.judge import SCORE_CHOICES

    scripted_engine.reply = lambda msgs, j, s: "Score: 1\nRationale: meh"
    scripted_engine.choice_logprobs = lambda reqs, prefix, choices: [
        {c: (0.0 if c == " 7" else -math.inf) for c in choices} for _ in reqs
    ]
    assert list(SCORE_CHOICES)[6] == " 7"
    rec = general_judge(scripted_engine)([cand("a", 0, "x")])[0]
    assert rec.scores["judge"] == 7.0 and rec.meta["judge_text_score"] == 1.0 and rec.kept


def test_judge_threshold_rejects_below_it(scripted_engine):
    replies = iter(["Score: 8", "Score: 3"])
    scripted_engine.reply = lambda msgs, j, s: next(replies)
    recs = general_judge(scripted_engine, threshold=7.0)([cand("a", 0, "x"), cand("a", 1, "y")])
    assert [r.kept for r in recs] == [True, False] and recs[1].verdicts[-1].reason == "below_threshold"


def test_gap_bands_label_one_pair_at_a_time_like_the_quartiles():
    import random

    from synth.stages.select import gap_bands, strength_of

    rng = random.Random(0)
    for n in range(1, 40):
        gaps = [rng.random() for _ in range(n)]
        assert [strength_of(g, gap_bands(gaps)) for g in gaps] == strengths_by_gap(gaps)
