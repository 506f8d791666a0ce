"""`synth mix` end to end on the embedded model: two sources of two capabilities (a general run and an
exported code dataset) through decontamination, the rubric judge, quality, difficulty, near-exact and
semantic dedup and the proportions; the dataset's card shows the mix and every removal has its reason.

The sources' rows are written by a scripted engine (the general run) and by hand (the code export),
with planted cases whose outcome is known: a copy of a held-out evaluation prompt, a near-exact copy
(one word changed in a long answer) and a reworded question with the same answer (a semantic
duplicate). The mix's own model calls (rubric judge, Instag tags, difficulty rating) run on the real
embedded model (hf engine)."""

from __future__ import annotations

import json

import pytest
import yaml

from pipelines.cli import main
from synth.export import export_dataset
from synth.records import Provenance, SFTRecord
from synth.store import Store

GENERAL_SEEDS = {
    "g1": "Give me three tips for sleeping better.",
    "g2": "What is a good way to learn a new language as an adult?",
    "g3": "Explain what inflation is in simple words.",
    "g4": "How do I write a polite email declining a meeting?",
}

LONG = (
    "A stack is a last-in, first-out collection: push adds an item on top and pop removes the top item. "
    "In Python a list works as a stack with append and pop, both constant time at the end of the list, "
    "and peeking is items[-1]. Checking emptiness is simply `if not items`."
)
HELD_OUT_COPY = (  # pipelines/data/heldout/code.jsonl, task count-vowels, word for word
    "Write a Python function `count_vowels(text: str) -> int` that returns how many vowels (a, e, i, o, "
    "u, upper or lower case) the text contains."
)


# the score the mix takes as the reward model's: the general run's judge score, here given by hand to
# the code rows so that the planted duplicates are in the top half (they reach the dedup stages) and
# c6-c8 are not (quality removes them unless the rubric judge gives them its maximum)
SCORES = {1: 10.0, 2: 9.0, 3: 8.0, 4: 7.5, 5: 5.0, 6: 1.0, 7: 2.0, 8: 3.0}


def code_rows() -> list[SFTRecord]:
    def row(i, question, answer):
        return SFTRecord(
            id=f"c{i}",
            messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            provenance=Provenance(capability="code"),
            scores={"judge": SCORES[i]},
        )

    return [
        row(1, "How do I use a Python list as a stack?", LONG),
        row(2, "How do I use a Python list as a stack?", LONG.replace("simply", "just")),  # near-exact
        row(3, "How do I reverse a list in Python?",
            "Use slicing: items[::-1] returns a reversed copy, or items.reverse() reverses it in place."),
        row(4, "How can I reverse a Python list?",  # reworded, same answer: a semantic duplicate
            "Use slicing: items[::-1] returns a reversed copy, or items.reverse() reverses it in place."),
        row(5, HELD_OUT_COPY, "def count_vowels(text):\n    return sum(c in 'aeiouAEIOU' for c in text)"),
        row(6, "What does the zip function do?", "zip pairs items of several iterables: zip([1], ['a'])."),
        row(7, "How do I read a file line by line?", "with open(path) as fh:\n    for line in fh: ..."),
        row(8, "How do I sort a dict by its values?", "sorted(d.items(), key=lambda kv: kv[1])"),
    ]  # fmt: skip


@pytest.mark.slow
def test_mix_of_two_capabilities_on_the_embedded_model(tmp_path, monkeypatch, capsys, scripted_engine):
    from synth.recipe import run_recipe
    from synth.recipes.general import GeneralConfig

    monkeypatch.setenv("SYNTH_NO_PROGRESS", "1")
    # source 1: a finished general run (scripted replies; the judge's score in its reply)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": k, "prompt": v}) + "\n" for k, v in GENERAL_SEEDS.items()))

    def reply(msgs, j, sampling):
        if msgs[0]["content"].startswith("You are a strict grader"):
            return f"Score: {7 + j}\nRationale: fine."
        return f"Here is a careful answer ({j}) to: {msgs[-1]['content']}"

    general = tmp_path / "general"
    cfg = GeneralConfig(seeds=str(seeds), out=str(general), k=2, top_fraction=1.0, max_tokens=32)
    scripted_engine.reply = reply
    run_recipe("general", cfg, engine=scripted_engine).close()
    # source 2: an exported code dataset (all in train: every row goes to the mix)
    code = tmp_path / "code_export"
    summary = {"name": "code", "funnel": [], "models": [], "engines": [], "templates": {}, "sampling": {}}
    export_dataset(code_rows(), [], code, summary, test_fraction=0.0)

    mix_yaml = tmp_path / "mix.yaml"
    mix_yaml.write_text(yaml.safe_dump({
        "out": str(tmp_path / "mix"),
        "sources": [{"path": str(general)}, {"path": str(code), "name": "code"}],
        "proportions": {"general": 1, "code": 1},
        "rm_score": "judge",
        "rm_top_fraction": 0.5,
        "engine": "hf",
        "batch_size": 8,
        "judge_max_tokens": 16,
    }))  # fmt: skip
    assert main(["mix", "--config", str(mix_yaml)]) == 0
    err = capsys.readouterr().err
    assert "mixed " in err and str(tmp_path / "mix" / "dataset") in err

    store = Store(tmp_path / "mix", read_only=True)
    funnel = {f["stage"]: f for f in store.funnel()}
    sql = "SELECT stage, key, kept, reason, data FROM records"
    rows = {
        key: (stage, kept, reason, json.loads(data))
        for stage, key, kept, reason, data in store.query(sql)
        if not kept and stage in ("decontaminate", "near_dedup", "semantic_dedup", "quality", "mix")
    }
    store.close()
    # decontamination: the copy of a held-out prompt, with what it overlaps
    assert funnel["decontaminate"]["reasons"] == {"contaminated": 1}
    stage, _, reason, data = rows["code:c5"]
    assert stage == "decontaminate" and data["meta"]["contaminated_by"]["set"] == "code"
    # every row left was judged by the model
    n = funnel["decontaminate"]["kept"] + funnel["decontaminate"]["rejected"]
    assert n == funnel["source_general"]["kept"] + 8
    assert funnel["rubric"]["kept"] + funnel["rubric"]["rejected"] == n - 1
    assert funnel["difficulty_rating"]["kept"] + funnel["difficulty_rating"]["rejected"] > 0
    # near-exact: the one-word edit of c1 (whichever of the two came first is kept)
    assert funnel["near_dedup"]["reasons"] == {"near_duplicate": 1}
    near = next(k for k, v in rows.items() if v[0] == "near_dedup")
    assert near in ("code:c1", "code:c2") and rows[near][3]["meta"]["duplicate_of"] in ("code:c1", "code:c2")
    # semantic: the reworded question with the same answer
    sem = [k for k, v in rows.items() if v[0] == "semantic_dedup"]
    pair = {"code:c3", "code:c4"}
    assert len(sem) == 1 and sem[0] in pair and rows[sem[0]][3]["meta"]["duplicate_of"] in pair - set(sem)
    assert rows[sem[0]][3]["scores"]["dup_similarity"] >= 0.9
    # quality: the top half by the score per capability (general: all at the cutoff) OR the rubric's
    # maximum; the rows below it that the judge did not give 10 are removed, with the reason
    low = {k for k, v in rows.items() if v[0] == "quality"}
    assert low <= {"code:c6", "code:c7", "code:c8"}
    assert all(rows[k][2] == "low_quality" for k in low)
    assert funnel["quality"]["rejected"] == len(low) and funnel["quality"]["kept"] == n - 1 - len(low)
    # the mix: equal shares of what is left (code: c1 or c2, c3 or c4 and the rows the judge kept)
    report = json.loads((tmp_path / "mix" / "dataset" / "mix.json").read_text())
    by_cap = {c["capability"]: c for c in report["capabilities"]}
    code_left = 2 + (3 - len(low))
    assert by_cap["code"]["available"] == code_left
    expected = min(code_left, by_cap["general"]["available"])
    assert by_cap["general"]["rows"] == by_cap["code"]["rows"] == expected and report["total"] == 2 * expected
    assert by_cap["general"]["asked"] == by_cap["code"]["asked"] == 0.5
    card = (tmp_path / "mix" / "dataset" / "README.md").read_text()
    assert "## Data mix" in card and "| code | 50.00% | 50.00% |" in card and "mix.png" in card
    assert f"| decontaminate | {n} |" in card and "contaminated: 1" in card
    assert "### Dropped by decontamination" in card and "| code:c5 | code | 0 | 1.00 |" in card
    (dropped,) = report["contaminated"]
    assert (dropped["id"], dropped["set"], dropped["item"], dropped["overlap"]) == ("code:c5", "code", 0, 1.0)
    assert (tmp_path / "mix" / "dataset" / "mix.png").stat().st_size > 1000
    assert str(general) in card  # each source and its funnel

    # the same command again: nothing is redone (every stage finished, the model is not loaded)
    assert main(["mix", "--config", str(mix_yaml)]) == 0
    assert json.loads((tmp_path / "mix" / "dataset" / "mix.json").read_text())["total"] == report["total"]
