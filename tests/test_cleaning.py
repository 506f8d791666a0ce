"""Rule cleaning: hard rules reject, tone rules score and flag, and flagged responses are kept up to a
share of the kept rows (Llama 3 balances them rather than dropping every one), the same on resume."""

from __future__ import annotations

import pytest

from synth.pipeline import Run
from synth.records import SFTRecord
from synth.stages import cleaning
from synth.stages.cleaning import Clean, clean, first_violation

PLAIN = "Paris is the capital of France."
LOUD = "Wow! Amazing! Great! Super!"  # 4 exclamation marks: flagged, not rejected


def cand(i: int, text: str | None, finish: str = "stop") -> SFTRecord:
    """A candidate response; ``None``: no visible text (a prompt-only row, as generation writes it)."""
    messages = [{"role": "user", "content": f"question {i}"}]
    if text is not None:
        messages.append({"role": "assistant", "content": text})
    meta = {"prompt_id": f"p{i}", "finish_reason": finish, "completion_tokens": 7}
    return SFTRecord(id=f"c{i:03d}", messages=messages, meta=meta)


def outcome(records) -> list[tuple[str, bool, str | None]]:
    return [(r.id, r.kept, r.verdicts[-1].reason) for r in records]


# -- the rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rule, bad, good",
    [
        (cleaning.overused_emoji, "Great 😀😀 job 🎉🎉 wow", "Great job 😀"),
        (cleaning.excess_exclamation, "Wow! Amazing! Great! Super!", "Wow! Nice. Also `a != b`!"),
        (cleaning.apologetic_tone, "I apologize for the confusion.", "The apology came later."),
        (cleaning.apologetic_tone, "Apologies for the delay. Here it is.", "Sure. I am not sorry at all."),
        (cleaning.empty, "   \n", "ok"),
    ],
)
def test_each_rule_flags_bad_and_passes_good(rule, bad, good):
    assert rule(bad, {}) is not None
    assert rule(good, {}) is None


def test_an_apology_after_the_opening_counts():
    text = "Sure. I'm sorry... I apologize again."
    assert cleaning.apologies(text) == ["I'm sorry", "I apologize"]
    assert cleaning.apologetic_tone(text, {}).startswith("2 apologetic phrases")


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I'm sorry, but I cannot help.",
        "Sorry, I can't do that.",
        "I apologize, but I'm unable to share that.",
        "I'm sorry, but as an AI I cannot browse the web.",
        "I'm sorry to hear that. Here is what helps.",
    ],
)
def test_a_refusal_or_sympathy_is_not_an_apologetic_tone(text):
    assert cleaning.apology_score(text) == 0
    assert cleaning.apologetic_tone(text, {}) is None


def test_a_refusal_that_keeps_apologising_is_flagged():
    text = "I'm sorry, but I can't help with that. I apologize for any inconvenience."
    assert cleaning.apologies(text) == ["I apologize"]


def test_check_marks_are_not_emoji():
    text = "✓ parsed\n✔ linted\n✅ tested\n✅ shipped\n☑ documented"
    assert cleaning.emoji_count(text) == 0
    assert cleaning.overused_emoji(text, {}) is None
    assert cleaning.emoji_count("✅ done 🎉🎉🎉🎉") == 4  # the party poppers still count


@pytest.mark.parametrize(
    "text",
    [
        "Compare with `x != y`, then `!important`, `!flag` and `!!x`. Done!",
        "In CSS, add !important: `color: red !important;` or !important again, !important!",
        "```js\nif (!ok) alert('hi!!!!');\n```\nDone!",
        "~~~\n!!!!\n~~~\nand an unclosed fence:\n```sh\necho hi!!!!",
        "![logo](a.png) ![chart](b.png) ![map](c.png) ![cat](d.png) Here they are!",
        "#!/bin/sh starts the script; `#!` is a shebang.",
    ],
)
def test_exclamation_marks_in_code_and_images_do_not_count(text):
    assert cleaning.exclamation_count(text) <= 1
    assert cleaning.excess_exclamation(text, {}) is None


def test_hard_rules_still_reject_first():
    assert cleaning.truncated("half a sent", {"finish_reason": "length", "completion_tokens": 9})
    assert cleaning.truncated("done.", {"finish_reason": "stop"}) is None
    assert first_violation("Sorry!!!! 😀😀😀😀", {}) is None  # tone is not a hard rule
    recs = clean([cand(0, PLAIN), cand(1, "Sorry!!!! 😀😀😀😀", finish="length"), cand(2, None)], 1.0)
    assert outcome(recs) == [("c000", True, None), ("c001", False, "truncated"), ("c002", False, "empty")]


# -- scores, flags and the cap --------------------------------------------------------------------
def test_each_rule_is_a_score_on_the_row():
    [plain, loud] = clean([cand(0, PLAIN), cand(1, "I'm sorry! 😀😀😀😀 Wow! Yes! Great!")], 1.0)
    assert plain.scores == {"emoji": 0.0, "exclamation": 0.0, "apology": 0.0}
    assert "clean_flags" not in plain.meta and plain.kept
    assert loud.scores == {"emoji": 4.0, "exclamation": 4.0, "apology": 1.0}
    assert loud.meta["clean_flags"] == ["overused_emoji", "excess_exclamation", "apologetic_tone"]
    assert loud.kept and loud.verdicts[-1].reason == "overused_emoji"  # kept, and says why it was flagged


def test_flagged_rows_are_kept_up_to_their_share_and_the_excess_rejected():
    texts = [LOUD if i % 3 == 0 else PLAIN for i in range(60)]  # 20 flagged of 60
    recs = clean([cand(i, t) for i, t in enumerate(texts)])  # default cap: 0.1
    kept = [r for r in recs if r.kept]
    flagged = [r for r in kept if r.meta.get("clean_flags")]
    assert len(kept) - len(flagged) == 40
    assert 0 < len(flagged) <= 0.1 * len(kept)
    assert len(flagged) == 4  # as many as the cap allows: 4 of 44
    excess = [r for r in recs if not r.kept]
    assert len(excess) == 16 and {r.verdicts[-1].reason for r in excess} == {"excess_exclamation_over_cap"}
    assert "cap" in excess[0].meta["clean_detail"]
    # every prefix of the stream respects the cap too (a running count)
    seen_kept = seen_flagged = 0
    for r in recs:
        seen_kept += r.kept
        seen_flagged += r.kept and bool(r.meta.get("clean_flags"))
        assert seen_flagged <= 0.1 * seen_kept + 1e-9


@pytest.mark.parametrize(("share", "kept_flagged"), [(0.0, 0), (0.5, 2), (1.0, 3)])
def test_the_cap_is_configurable(share, kept_flagged):
    recs = clean([cand(i, t) for i, t in enumerate([PLAIN, LOUD, PLAIN, LOUD, LOUD])], share)
    assert sum(r.kept and bool(r.meta.get("clean_flags")) for r in recs) == kept_flagged
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Clean(max_flagged_share=1.5)


class CrashAfter(Clean):
    """Clean that dies (as a kill would) when it is handed its third batch."""

    def __call__(self, records):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            raise RuntimeError("killed")
        return super().__call__(records)


def test_a_resumed_stage_decides_every_row_as_an_uninterrupted_one(tmp_path):
    # ten plain rows (two batches of 5) then flagged ones: the first flagged row is kept only
    # because the ten rows before it, committed before the crash, count
    texts = [PLAIN] * 10 + [LOUD, LOUD, PLAIN, LOUD, PLAIN] + [PLAIN] * 9 + [LOUD] * 6

    def run_clean(out, stage):
        run = Run(out, config={"recipe": "clean-test"})
        try:
            gen = run.source("generate", (cand(i, t) for i, t in enumerate(texts)))
            run.map(stage, gen, batch_size=5)
            return outcome(run.store.records("clean"))
        finally:
            run.close()

    reference = run_clean(tmp_path / "ref", Clean())
    with pytest.raises(RuntimeError, match="killed"):
        run_clean(tmp_path / "killed", CrashAfter())
    resumed = run_clean(tmp_path / "killed", Clean())
    assert resumed == reference
    assert reference[10] == ("c010", True, "excess_exclamation")
    assert reference[11] == ("c011", False, "excess_exclamation_over_cap")


# -- the general recipe ---------------------------------------------------------------------------
def test_general_recipe_takes_the_cap_from_its_config(tmp_path, scripted_engine, capsys):
    from pipelines.cli import main
    from synth.config import ConfigError
    from synth.recipe import run_recipe
    from synth.recipes.general import GeneralConfig

    def reply(msgs, j, sampling):
        if msgs[0]["role"] == "system" and "Score" in msgs[0]["content"]:
            return "Score: 7\nRationale: fine."
        return LOUD if j == 0 else f"{PLAIN} ({j})"

    scripted_engine.reply = reply
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(f'{{"id": "s{i}", "prompt": "Question {i}?"}}\n' for i in range(5)))

    def flagged_kept(share, out):
        cfg = GeneralConfig(seeds=str(seeds), out=str(tmp_path / out), k=2, max_flagged_share=share)
        run = run_recipe("general", cfg, scripted_engine)
        try:
            rows = run.store.records("clean", kept=True)
            stages = [f["stage"] for f in run.store.funnel()]
        finally:
            run.close()
        assert "top_fraction" in stages and "top_quartile" not in stages
        return sum(bool(r.meta.get("clean_flags")) for r in rows)

    assert flagged_kept(1.0, "all") == 5
    assert flagged_kept(0.0, "none") == 0
    assert GeneralConfig(out="x").max_flagged_share == 0.1
    with pytest.raises(ConfigError, match=r"max_flagged_share must be in \[0.0, 1.0\]"):
        GeneralConfig(out="x", max_flagged_share=2)
    assert main(["run", "general", "--help"]) == 0
    assert "--max-flagged-share" in capsys.readouterr().out
