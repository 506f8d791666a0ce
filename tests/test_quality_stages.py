"""Llama 3 section 4.2.3's quality and difficulty stages, and decontamination: control flow on a
scripted engine, the stages end to end on the real embedded model, and the quality union in a real
run over a real store."""

from __future__ import annotations

import json
import math

import pytest

from synth.engines.base import SamplingParams, TokenCount
from synth.pipeline import Run
from synth.records import Message, PreferenceRecord, Provenance, Response, SFTRecord, Unparsed
from synth.stages.decontam import (
    Decontaminate,
    Decontaminator,
    contamination_report,
    read_held_out,
    words,
)
from synth.stages.difficulty import DifficultyRating, InstagTags, parse_rating, parse_tags
from synth.stages.quality import QualitySelect, RubricJudge, capability_quantiles, percentile
from synth.stages.select import quantile

try:  # works whether or not tests/ is a package
    from tests.conftest import ScriptedEngine
except ImportError:  # pragma: no cover
    from conftest import ScriptedEngine


def row(id, question, answer=None, capability="general", rm=None, rubric=None, history=()):
    msgs = [*history, Message(role="user", content=question)]
    if answer is not None:
        msgs.append(Message(role="assistant", content=answer))
    scores = {}
    if rm is not None:
        scores["rm"] = rm
    if rubric is not None:
        scores["rubric"] = rubric
    return SFTRecord(id=id, messages=msgs, provenance=Provenance(capability=capability), scores=scores)


class LogprobEngine(ScriptedEngine):
    """A scripted engine that also reads choice distributions: all mass on ``favourite``."""

    def __init__(self, reply, favourite):
        super().__init__(reply)
        self.favourite = favourite
        self.prefixes = []

    def choice_logprobs(self, requests, prefix, choices):
        self.prefixes.append(prefix)
        return [{c: (0.0 if c == self.favourite[prefix] else -30.0) for c in choices} for _ in requests]


class LimitedEngine(ScriptedEngine):
    """A scripted engine with a context of 200 tokens: one token per character of the last turn."""

    context_length = 200

    def count_prompt_tokens(self, request, limit):
        return TokenCount(len(request.messages[-1]["content"]))


# -- RubricJudge ------------------------------------------------------------------------------------
def rubric_reply(msgs, j, sampling):
    system, question = msgs[0]["content"], msgs[-1]["content"]
    if "mumble" in question:
        return "I cannot say."
    if "bug identification" in system:  # the code rubric
        return "Score: 10\nRationale: No bug."
    assert "tone and presentation" in system  # the general rubric
    return "Score: 4\nRationale: Partly wrong."


def test_rubric_judge_picks_the_rubric_by_capability_and_keeps_unscored_rows():
    engine = ScriptedEngine(rubric_reply)
    recs = [
        row("g", "Name a color.", "Blue."),
        row("c", "Write a sum function.", "def f(xs): return sum(xs)", capability="code"),
        row("m", "What is 2 + 3?", "5", capability="math"),  # no rubric of its own: general
        row("u", "mumble", "what?"),
        row("n", "No answer here."),
    ]
    out = {r.id: r for r in RubricJudge(engine=engine)(recs)}
    assert out["g"].scores["rubric"] == 4.0 and out["g"].meta["rubric"] == "quality/rubric_general"
    assert out["c"].scores["rubric"] == 10.0 and out["c"].meta["rubric"] == "quality/rubric_code"
    assert out["m"].meta["rubric"] == "quality/rubric_general" and out["m"].scores["rubric"] == 4.0
    assert out["g"].meta["rubric_score_method"] == "text" and out["g"].meta["rubric_reply"].startswith(
        "Score"
    )
    assert out["c"].meta["rubric_rationale"] == "No bug."
    # no score: kept (the reward model may still call it high quality), the reason on the verdict
    assert "rubric" not in out["u"].scores and out["u"].kept
    assert (
        out["u"].verdicts[-1].reason == "rubric_unparsed" and out["u"].meta["rubric_reply"] == "I cannot say."
    )
    assert not out["n"].kept and out["n"].verdicts[-1].reason == "no_response"
    assert all(v.stage == "rubric" for r in out.values() for v in r.verdicts)


def test_rubric_judge_reads_the_expectation_where_the_engine_has_logprobs():
    engine = LogprobEngine(lambda m, j, s: "Score: 7", {"Score:": " 10"})
    (rec,) = RubricJudge(engine=engine)([row("g", "Name a color.", "Blue.")])
    assert rec.meta["rubric_score_method"] == "logprobs" and rec.meta["rubric_text_score"] == 7.0
    assert 9.5 <= rec.scores["rubric"] <= 10.0  # the maximum, read from the distribution
    assert engine.prefixes == ["Score:"]


# -- difficulty ----------------------------------------------------------------------------------
def test_parse_tags_and_rating_are_lenient():
    assert parse_tags("Tags: Math, math , Proof\n- Geometry\n2. word problem") == [
        "math",
        "proof",
        "geometry",
        "word problem",
    ]
    assert parse_tags('[{"tag": "Coding", "explanation": "..."}, {"tag": "python"}]') == ["coding", "python"]
    assert parse_tags('here: ["A", "b", "a"]') == ["a", "b"]
    assert parse_tags("The user wants to know a lot of things about the weather today.") == []
    assert parse_tags("") == [] and parse_tags("1, 2, 3") == []
    assert parse_rating("Difficulty: 3\nRationale: hard") == 3
    assert parse_rating("I would say 2/3.") == 2 and parse_rating("2 - medium") == 2
    assert parse_rating("Difficulty: easy") == 1 and parse_rating("The difficulty is hard.") == 3
    assert parse_rating("Difficulty: 10") is None and parse_rating("no idea") is None


def difficulty_reply(msgs, j, sampling):
    q = msgs[-1]["content"]
    if "Tag the request" in q:
        if "Prove" in q:
            return "Tags: proof, number theory, explanation"
        return "The request is something I cannot tag at all sorry."
    return "Difficulty: 3\nRationale: hard." if "Prove" in q else "Difficulty: 1\nRationale: easy."


def test_instag_and_rating_scores_combine_and_unparsed_rows_stay_neutral():
    engine = ScriptedEngine(difficulty_reply)
    recs = [row("hard", "Prove there are infinitely many primes."), row("easy", "What is 2 + 2?")]
    recs = InstagTags(engine=engine)(recs)
    hard, easy = recs
    assert hard.meta["instag"] == ["proof", "number theory", "explanation"]
    assert hard.scores["instag_count"] == 3.0 and hard.scores["difficulty"] == 0.3  # min(3, 10) / 10
    assert hard.meta["instag_reply"].startswith("Tags:") and hard.verdicts[-1].reason is None
    # unparsed: kept, neutral, the fact in meta and on the (kept) verdict
    assert easy.kept and easy.verdicts[-1].reason == "difficulty_unparsed"
    assert easy.meta["difficulty_unparsed"] == {"instag": "no_tags"} and "instag_count" not in easy.scores
    assert easy.scores["difficulty"] == 0.5 and easy.meta["instag_reply"].startswith("The request")
    recs = DifficultyRating(engine=engine)(recs)
    assert hard.scores["difficulty_rating"] == 3.0 and hard.meta["difficulty_rating_method"] == "text"
    assert hard.scores["difficulty"] == pytest.approx((0.3 + 1.0) / 2)  # mean of the two components
    assert easy.scores["difficulty_rating"] == 1.0
    assert easy.scores["difficulty"] == pytest.approx((0.5 + 0.0) / 2)  # neutral tags, easy rating
    assert [r.id for r in recs] == ["hard", "easy"] and all(r.kept for r in recs)
    assert hard.provenance.capability == "general"  # annotated in place: the row's own provenance
    pair = PreferenceRecord(
        id="pair",
        prompt=[Message(role="user", content="Prove that 2 is prime.")],
        responses=[Response(content="It is.", label="chosen"), Response(content="No.", label="rejected")],
    )
    (pair,) = InstagTags(engine=engine)([pair])  # a preference row: its prompt is tagged
    assert pair.meta["instag"] == ["proof", "number theory", "explanation"] and pair.kept


def test_rating_is_the_expectation_over_three_labels_with_logprobs():
    engine = LogprobEngine(lambda m, j, s: "no rating written", {"Difficulty:": " 2"})
    (rec,) = DifficultyRating(engine=engine)([row("r", "Explain recursion.")])
    assert rec.scores["difficulty_rating"] == pytest.approx(2.0, abs=1e-6)
    assert rec.meta["difficulty_rating_method"] == "logprobs" and rec.meta["difficulty_text_rating"] is None
    assert rec.scores["difficulty"] == pytest.approx(0.5) and "difficulty_unparsed" not in rec.meta
    assert engine.prefixes == ["Difficulty:"]


def test_difficulty_keeps_rows_it_cannot_ask_about():
    engine = LimitedEngine(difficulty_reply)
    long_q = row("long", "Prove " + "very " * 40 + "hard things.")
    item = Unparsed(id="u", input_id="x", raw="junk")  # no prompt to rate
    out = DifficultyRating(engine=engine)([long_q, item, row("ok", "Hi?")])
    assert engine.calls == [1]  # only the short prompt went to the engine
    assert [r.id for r in out] == ["long", "u", "ok"] and all(r.kept for r in out)
    assert out[0].meta["difficulty_unparsed"] == {"difficulty_rating": "prompt_too_long"}
    assert "tokens >" in out[0].meta["difficulty_rating_detail"]
    assert out[1].meta["difficulty_unparsed"] == {"difficulty_rating": "no_prompt"}
    assert out[0].scores["difficulty"] == out[1].scores["difficulty"] == 0.5
    assert out[2].scores["difficulty_rating"] == 1.0 and out[2].scores["difficulty"] == 0.0
    with pytest.raises(ValueError, match="one reply per row"):
        InstagTags(engine=engine, sampling=SamplingParams(n=2))


# -- the real embedded model ---------------------------------------------------------------------
def test_difficulty_and_rubric_stages_on_the_embedded_model(hf_engine):
    recs = [
        row("a", "What is the capital of France?", "The capital of France is Paris."),
        row(
            "b", "Write a Python function that reverses a string.", "def rev(s):\n    return s[::-1]", "code"
        ),
    ]
    # short replies: the tags' first line, the rating and the score come in the first tokens (the
    # scores themselves are read from the probabilities after "Difficulty:" / "Score:")
    recs = InstagTags(engine=hf_engine, sampling=SamplingParams(n=1, temperature=0.0, max_tokens=16))(recs)
    recs = DifficultyRating(engine=hf_engine, sampling=SamplingParams(n=1, temperature=0.0, max_tokens=8))(
        recs
    )
    recs = RubricJudge(engine=hf_engine, max_tokens=8)(recs)
    assert [r.id for r in recs] == ["a", "b"] and all(r.kept for r in recs)
    for r in recs:
        assert isinstance(r.meta["instag_reply"], str) and r.meta["instag_reply"]
        if "instag" in r.meta:  # the 135M model's tags: structure only
            tags = r.meta["instag"]
            assert (
                tags and all(t == t.lower() and t.strip() == t for t in tags) and len(set(tags)) == len(tags)
            )
            assert r.scores["instag_count"] == len(tags)
        else:
            assert r.meta["difficulty_unparsed"]["instag"] == "no_tags"
        # hf reads the three labels' probabilities: always a rating, in [1, 3]
        assert r.meta["difficulty_rating_method"] == "logprobs" and isinstance(
            r.meta["difficulty_reply"], str
        )
        assert 1.0 <= r.scores["difficulty_rating"] <= 3.0
        assert 0.0 <= r.scores["difficulty"] <= 1.0
        assert r.meta["rubric_score_method"] == "logprobs" and isinstance(r.meta["rubric_reply"], str)
        assert 1.0 <= r.scores["rubric"] <= 10.0
    assert (
        recs[1].meta["rubric"] == "quality/rubric_code" and recs[0].meta["rubric"] == "quality/rubric_general"
    )


# -- QualitySelect in a real run ----------------------------------------------------------------
def test_quality_select_per_capability_quartiles_and_the_union(tmp_path):
    general = [row(f"g{i}", f"general question {i}", f"answer {i}", rm=float(i)) for i in range(1, 9)]
    general[6].scores["rubric"] = 3.0  # g7: RM top quartile of general, low rubric
    general[7].scores["rubric"] = 10.0  # g8: both
    general[0].scores["rubric"] = 10.0  # g1: maximum rubric, lowest RM
    general[1].scores["rubric"] = 5.0  # g2: neither
    code = [row(f"c{i}", f"code task {i}", f"code {i}", "code", rm=10.0 * i) for i in range(1, 5)]
    code[0].scores["rubric"] = 9.6  # c1: an expectation that counts as the maximum
    code[1].scores["rubric"] = 9.4  # c2: just below it
    judged_only = [
        row("j1", "judge only, best", "a", rubric=10.0),
        row("j2", "judge only, middling", "b", rubric=6.0),
        row("f1", "factuality, no reward model yet", "c", "factuality", rubric=10.0),
    ]
    unscored = row("u1", "nothing scored this", "d")
    dropped = row("x", "rejected upstream", "e", rm=1000.0)
    dropped.reject("rm_score", "no_response")  # not in the input: must not move the cutoff
    items = [*general, *code, *judged_only, unscored, dropped]

    run = Run(tmp_path / "run")
    src = run.source("scored", items)
    select = QualitySelect()
    out = run.map(select, src, batch_size=4)

    # per capability: numpy's linear 0.75 quantile of each capability's kept RM scores
    assert select.cutoffs == {
        "general": pytest.approx(quantile([float(i) for i in range(1, 9)], 0.75)),  # 6.25
        "code": pytest.approx(quantile([10.0, 20.0, 30.0, 40.0], 0.75)),  # 32.5
    }
    assert select.cutoffs["general"] == pytest.approx(6.25) and select.cutoffs["code"] == pytest.approx(32.5)
    overall = run.store.quantile(["scored"], True, "rm", 0.75)
    assert overall > 7.0  # one cutoff over both capabilities would have rejected g7

    recs = {r.id: r for r in run.records(out.all)}
    assert set(recs) == {r.id for r in items if r.kept}  # every input row written, none dropped
    by = {i: r.meta.get("quality_by") for i, r in recs.items() if r.kept}
    assert by == {
        "g7": "rm_top_quartile",
        "g8": "both",
        "g1": "judge_max",
        "c4": "rm_top_quartile",
        "c1": "judge_max",
        "j1": "judge_max",
        "f1": "judge_max",
    }
    reasons = {i: r.verdicts[-1].reason for i, r in recs.items() if not r.kept}
    assert reasons == {
        "g2": "low_quality",
        "g3": "low_quality",
        "g4": "low_quality",
        "g5": "low_quality",
        "g6": "low_quality",  # 6 < 6.25
        "c2": "low_quality",  # rubric 9.4 < 9.5 and RM 20 < 32.5
        "c3": "low_quality",  # 30 < 32.5
        "j2": "low_quality",
        "u1": "unscored",
    }
    assert recs["g7"].meta["quality_rm_cutoff"] == pytest.approx(6.25)
    assert recs["c4"].meta["quality_rm_cutoff"] == pytest.approx(32.5)
    # quality: max(RM percentile within the capability, rubric / 10)
    assert recs["g7"].scores["quality"] == pytest.approx(6 / 7, abs=1e-3)  # 7 is 6/7 of the way 1 -> 8
    assert recs["g8"].scores["quality"] == 1.0 and recs["g1"].scores["quality"] == 1.0
    assert recs["g1"].meta["quality_rm_percentile"] == 0.0
    assert recs["g2"].scores["quality"] == pytest.approx(0.5)  # rubric 5 beats percentile 1/7
    assert recs["c3"].scores["quality"] == pytest.approx(2 / 3, abs=1e-3)
    assert recs["j2"].scores["quality"] == pytest.approx(0.6) and "quality" not in recs["u1"].scores
    for r in recs.values():
        if "quality" in r.scores:
            assert 0.0 <= r.scores["quality"] <= 1.0
        if r.meta.get("quality_by") in ("rm_top_quartile", "both"):
            assert r.meta["quality_rm_percentile"] >= 0.75
        elif "quality_rm_percentile" in r.meta:
            assert r.meta["quality_rm_percentile"] < 0.75
    run.close()


def test_capability_quantiles_match_the_store_quantile_and_the_percentile_grid(tmp_path):
    run = Run(tmp_path / "run")
    vals = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0]
    run.source("s", [row(f"r{i}", f"q {i}", "a", "math", rm=v) for i, v in enumerate(vals)])
    qs = [0.0, 0.25, 0.5, 0.75, 1.0]
    found = capability_quantiles(run.store, ["s"], True, "rm", qs)
    assert list(found) == ["math"]
    assert found["math"] == pytest.approx([run.store.quantile("s", True, "rm", q) for q in qs])
    assert found["math"] == pytest.approx([quantile(vals, q) for q in qs])
    assert capability_quantiles(run.store, ["s"], False, "rm", qs) == {}  # no rejected row
    assert capability_quantiles(run.store, ["s"], True, "rubric", qs) == {}  # no such score
    # latest: a row that appears in two stages counts once, as its last stage wrote it
    run.source("s2", [row("r0", "q 0", "a", "math", rm=100.0), row("n0", "q n", "a", "code", rm=7.0)])
    both = capability_quantiles(run.store, ["s", "s2"], True, "rm", [1.0], latest=True)
    assert both == {"math": [100.0], "code": [7.0]}
    assert capability_quantiles(run.store, ["s", "s2"], True, "rm", [0.0], latest=True)["math"] == [1.0]
    union = capability_quantiles(run.store, ["s", "s2"], True, "rm", [0.5])["math"][0]
    assert union == pytest.approx(quantile([*vals, 100.0], 0.5))  # without latest: both copies
    grid = [0.0, 1.0, 2.0, 4.0]
    assert percentile(-1.0, grid) == 0.0 and percentile(5.0, grid) == 1.0
    assert percentile(1.0, grid) == pytest.approx(1 / 3) and percentile(3.0, grid) == pytest.approx(2.5 / 3)
    run.close()


def test_quality_select_needs_its_prepare():
    with pytest.raises(RuntimeError, match="prepare"):
        QualitySelect()([row("a", "q", "a", rm=1.0)])


# -- decontamination -----------------------------------------------------------------------------
GSM = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
HELD_OUT = {
    "gsm8k": [
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
        "How much did she earn?",
        GSM,
    ],
    "short": ["Name three French painters."],  # fewer than 8 words: matched whole
}


def test_decontaminator_copy_paraphrase_and_unrelated():
    d = Decontaminator(HELD_OUT)
    assert d.n == 8 and d.threshold == 0.5 and len(d) == 3
    copy = d.check(
        "  NATALIA sold clips to 48 of her friends in April -- and then she sold half as many "
        "clips in May! How many clips did Natalia sell altogether in April and May"
    )
    assert copy is not None and (copy.set, copy.item, copy.overlap) == ("gsm8k", 1, 1.0)
    paraphrase = (
        "Here is a puzzle for you. Natalia sold clips to 48 of her friends in April, and then she "
        "sold half as many clips in May. What is the total number of clips she sold over both months?"
    )
    hit = d.check(paraphrase)
    span = len(
        words("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May")
    )
    assert hit is not None and (hit.set, hit.item) == ("gsm8k", 1)
    assert hit.overlap == pytest.approx(span / len(words(GSM)), abs=1e-3) and 0.5 <= hit.overlap < 1.0
    # one shared 8-gram in a long, different prompt: an overlap, below the threshold
    loose = (
        "Write a short story about a shop where she sold half as many clips in May as in June, and the "
        "owner, a retired sailor, learns to paint watercolours of the harbour at dawn with his grandson."
    )
    near = d.overlaps(loose)
    assert near is not None and 0.0 < near.overlap < 0.5 and d.check(loose) is None
    assert d.check("Explain the water cycle to a ten year old in simple words and with an example.") is None
    # a held-out item shorter than n words, contained whole in a longer prompt; not a part of it
    short = d.check(["Hello.", "Please name three French painters, and say what they painted."])
    assert short is not None and (short.set, short.item, short.overlap) == ("short", 0, 1.0)
    assert d.check("Name three French cheeses.") is None


def test_decontaminate_stage_report_and_held_out_files(tmp_path):
    (tmp_path / "gsm8k.jsonl").write_text(
        "\n".join(json.dumps({"question": q, "answer": "42"}) for q in HELD_OUT["gsm8k"]) + "\n\n"
    )
    (tmp_path / "math.jsonl").write_text(
        json.dumps({"problem": "Find the sum of all x with x^2 = 4."}) + "\n"
    )
    (tmp_path / "chat.jsonl").write_text(
        json.dumps(
            {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi there you"}]}
        )
        + "\n"
        + json.dumps({"prompt": "Name three French painters."})
        + "\n"
    )
    held = read_held_out([tmp_path / "gsm8k.jsonl", tmp_path / "math.jsonl", tmp_path / "chat.jsonl"])
    assert held == {
        "gsm8k": HELD_OUT["gsm8k"],
        "math": ["Find the sum of all x with x^2 = 4."],
        "chat": ["Hi there you", "Name three French painters."],
    }
    (tmp_path / "bad.jsonl").write_text(json.dumps({"answer": "no prompt"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1"):
        read_held_out([tmp_path / "bad.jsonl"])

    stage = Decontaminate(Decontaminator(held))
    recs = [
        row("copy", "Quick one: " + GSM, "72"),
        row(
            "multi",
            "And the next one?",
            "Ok.",
            history=(Message(role="user", content=GSM), Message(role="assistant", content="72")),
        ),
        row("ok", "Explain photosynthesis in two paragraphs for a biology class.", "Plants..."),
        row("paint", "Can you name three French painters for my art class?", "Monet..."),
        Unparsed(id="u", input_id="x", raw="junk"),
    ]
    out = {r.id: r for r in stage(recs)}
    assert not out["copy"].kept and out["copy"].verdicts[-1].reason == "contaminated"
    assert out["copy"].meta["contaminated_by"] == {"set": "gsm8k", "item": 1, "overlap": 1.0}
    assert not out["paint"].kept and out["paint"].meta["contaminated_by"]["set"] == "chat"
    assert out["multi"].meta["contaminated_by"] == {
        "set": "gsm8k",
        "item": 1,
        "overlap": 1.0,
    }  # an earlier turn
    assert out["ok"].kept and "contaminated_by" not in out["ok"].meta
    assert out["u"].kept and out["u"].verdicts[-1].reason == "no_prompt"
    report = contamination_report(out.values())
    assert report == [
        {"id": "copy", "set": "gsm8k", "item": 1, "overlap": 1.0},
        {"id": "multi", "set": "gsm8k", "item": 1, "overlap": 1.0},
        {"id": "paint", "set": "chat", "item": 1, "overlap": 1.0},
    ]
    assert not math.isnan(report[0]["overlap"])
