"""`synth run factuality` and `synth eval factuality`: the corpus, the question checks, the probe's
decision per question, refusal rows and pairs, the recipe end to end (scripted and on the embedded
model), the data card's source licence, and the evaluation's rates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipelines.cli import main
from synth.engines.base import Completion
from synth.recipe import run_recipe
from synth.recipes.factuality import SHIPPED_CORPUS, SHIPPED_PROBES, FactualityConfig
from synth.records import Message, SFTRecord
from synth.stages.factuality.corpus import pieces, read_corpus
from synth.stages.factuality.evaluate import Probe, evaluate, read_probes
from synth.stages.factuality.items import Snippet
from synth.stages.factuality.probe import ProbeSelect, Thresholds, decide
from synth.stages.factuality.questions import WriteQuestions, mentions
from synth.stages.factuality.refusal import is_refusal
from synth.stages.llm import Reject


def test_the_shipped_corpus_and_probes_are_disjoint_checkable_facts():
    snippets = list(read_corpus(SHIPPED_CORPUS))
    assert len(snippets) == 40 and snippets[0].id == "countries.txt#0"
    assert snippets[0].text.startswith(
        "Germany is a country in Western Europe"
    ) and "Its capital is Berlin." in (snippets[0].text)
    probes = list(read_probes(SHIPPED_PROBES))
    assert len(probes) == 28 and len({p.id for p in probes}) == 28
    corpus = " ".join(s.text for s in snippets)
    for p in probes:  # held out: no probe's country is in the corpus, every answer is in its snippet
        country = re.search(r"(?:capital of|continent is) (?:the )?(.+?)[?:]", p.question).group(1)
        assert f"{country} is a country" not in corpus and mentions(p.snippet, p.answer), p.id
        assert not p.answered_by(p.question), p.id  # a reply that echoes the question is not an answer
    assert pieces("One. Two is longer. Three.", 12) == ["One.", "Two is longer.", "Three."]


def test_corpus_of_the_users_files(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n" + "Lisbon is the capital of Portugal. " * 3 + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text(
        "x" * 20 + "\n\n" + "The Nile flows into the Mediterranean Sea. " * 3
    )
    (tmp_path / "skip.json").write_text("{}")
    assert [s.id for s in read_corpus(tmp_path)] == ["a.md#0", "sub/b.txt#0"]
    from synth.io import InputFileError

    with pytest.raises(InputFileError, match="no snippet of at least 500 characters"):
        list(read_corpus(tmp_path / "sub", min_chars=500))


def test_a_question_is_kept_only_when_its_snippet_answers_it(scripted_engine):
    write = WriteQuestions(engine=scripted_engine, sampling=None)  # type: ignore[arg-type]
    snip = Snippet(id="s", text="Peru is a country in South America. Its capital is Lima.")

    def parse(text: str):
        return write.parse(
            snip, Completion(text=text, prompt_tokens=1, completion_tokens=1, finish_reason="stop"), 0, []
        )

    q = parse("Question: What is the capital of Peru?\nAnswer: Lima.")
    assert (q.question, q.reference, q.snippet_id) == ("What is the capital of Peru?", "Lima", "s")
    for reply, reason in [
        ("Question: What is the capital of Peru?\nAnswer: Cusco", "answer_not_in_snippet"),
        ("Question: Is Lima the capital of Peru?\nAnswer: Lima", "answer_in_question"),
        ("Question: Tell me about Peru\nAnswer: Lima", "no_question"),
        ("Question: What is the capital of Peru?", "no_answer"),
        ("Peru is nice.", "no_question"),
    ]:
        with pytest.raises(Reject) as e:
            parse(reply)
        assert e.value.reason == reason, reply


def test_refusals_are_told_from_answers():
    refusals = [
        "I'm not sure what the capital of Peru is.",
        "I don't know.",
        "I cannot answer that reliably.",
        "Honestly, I am not certain about that.",
        "I don't have reliable information on this.",
    ]
    for text in refusals:
        assert is_refusal(text), text
    for text in ["The capital of Peru is Lima.", "Lima, I know that for sure.", "It is not Cusco but Lima."]:
        assert not is_refusal(text), text


def answer(rid: str, text: str, correctness: float, informativeness: float, q: str = "q1") -> SFTRecord:
    return SFTRecord(
        id=rid,
        messages=[
            Message(role="user", content="What is the capital of Peru?"),
            Message(role="assistant", content=text),
        ],
        scores={"correctness": correctness, "informativeness": informativeness},
        meta={"prompt_id": q, "reference": "Lima", "question": "What is the capital of Peru?"},
    )


def test_the_probe_decides_known_consistently_wrong_or_inconsistent():
    t = Thresholds()
    known = [answer("a", "Lima.", 9, 9), answer("b", "It is Lima.", 8, 9), answer("c", "Cusco.", 2, 9)]
    wrong = [answer("d", "Cusco.", 2, 9, "q2"), answer("e", "Arequipa.", 1.5, 8, "q2")]
    mixed = [answer("f", "Cusco.", 2, 9, "q3"), answer("g", "I'm not sure.", 1, 2, "q3")]
    assert decide(known, t)[0] == "known" and decide(wrong, t)[0] == "consistently_wrong"
    assert decide(mixed, t) == ("inconsistent", {"answers": 2, "correct": 0, "informative_wrong": 1})
    # a refusal is never informative, whatever the judge says; by match, "Cusco" is wrong whatever it says
    assert decide([answer("h", "I don't know, maybe Cusco.", 1, 9)], t)[0] == "inconsistent"
    assert decide([answer("i", "Lima!", 1, 9)], Thresholds(correct_by="match"))[0] == "known"
    assert decide([answer("i", "Lima!", 1, 9)], Thresholds(correct_by="both"))[0] == "consistently_wrong"

    rows = [r.model_copy(deep=True) for r in known + wrong + mixed]
    ProbeSelect("known", t)(rows)
    assert {r.id: r.verdicts[-1].reason for r in rows} == {
        "a": "known", "b": "not_best", "c": "incorrect", "d": "consistently_wrong", "e": "consistently_wrong",
        "f": "inconsistent", "g": "inconsistent",
    }  # fmt: skip
    rows = [r.model_copy(deep=True) for r in known + wrong + mixed]
    ProbeSelect("consistently_wrong", t)(rows)
    assert [r.id for r in rows if r.kept] == ["d"]  # the most informative wrong answer
    assert rows[4].verdicts[-1].reason == "not_most_informative" and rows[0].verdicts[-1].reason == "known"
    assert rows[0].meta["probe"] == {"verdict": "known", "answers": 3, "correct": 2, "informative_wrong": 1}


# -- the recipe, scripted -------------------------------------------------------------------------
def scripted(msgs, j, sampling):
    """Questions about capitals; the policy knows Berlin and Paris, always says Springfield for the
    others; judges that compare with the expected answer; refusals."""
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    last = msgs[-1]["content"]
    if system.startswith("You write quiz"):
        m = re.search(r"Text: (.+?) is a country.*?Its capital is ([^.]+)\.", last)
        return f"Question: What is the capital of {m.group(1)}?\nAnswer: {m.group(2)}"
    if system.startswith("You check answers"):
        expected, given = (
            re.search(r"Expected: (.+)", last).group(1),
            re.search(r"Answer: (.+)", last).group(1),
        )
        return "Score: 9\nRationale: right." if expected in given else "Score: 2\nRationale: wrong."
    if system.startswith("You rate how informative"):
        return "Score: 8\nRationale: specific."
    if system.startswith("You write the reply of an honest"):
        return "I'm not sure of the answer, and I would rather not guess." if "Italy" not in last else "Rome!"
    for country, capital in (("Germany", "Berlin"), ("France", "Paris")):
        if country in last:
            return f"The capital of {country} is {capital}."
    return "The capital is Springfield."


def test_the_recipe_end_to_end_with_a_scripted_model(tmp_path, scripted_engine, capsys):
    scripted_engine.reply = scripted
    cfg = FactualityConfig(out=str(tmp_path / "r"), snippets_limit=4, k=3)
    run = run_recipe("factuality", cfg, scripted_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    assert list(funnel) == [
        "snippets", "write_questions", "answer", "correctness", "informativeness", "known_answers",
        "consistently_wrong", "write_refusals", "refusal_pairs",
    ]  # fmt: skip
    assert all(sum(f["reasons"].values()) == f["rejected"] for f in funnel.values())
    # Germany, France: known; Italy, Spain: consistently wrong (Springfield); Italy's refusal is none
    assert funnel["known_answers"]["kept"] == 2 and funnel["consistently_wrong"]["kept"] == 2
    assert funnel["write_refusals"]["reasons"] == {"not_a_refusal": 1}
    assert funnel["refusal_pairs"]["kept"] == 1
    known = {r.meta["question"]: r.response for r in run.store.iter_records("known_answers", kept=True)}
    assert known == {"What is the capital of Germany?": "The capital of Germany is Berlin.",
                     "What is the capital of France?": "The capital of France is Paris."}  # fmt: skip
    (pair,) = run.store.iter_records("refusal_pairs", kept=True)
    assert pair.prompt[0].content == "What is the capital of Spain?"
    assert is_refusal(pair.chosen.content) and pair.rejected.content == "The capital is Springfield."
    assert run.store.get_meta("outcomes") == {
        "snippets": 4, "questions": 4, "known questions": 2, "consistently wrong": 2, "inconsistent": 0,
        "known-answer sft": 2, "refusal sft": 1, "refusal pairs": 1, "refusal share": 0.3333,
    }  # fmt: skip
    run.close()

    assert main(["export", str(tmp_path / "r"), "--to", str(tmp_path / "ds")]) == 0
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "## Source data" in card and "countryinfo 1.0.1" in card and "MIT" in card
    assert "## Languages" not in card  # no row records a language


class FixedReplies:
    """An engine whose replies depend on the question and on whether it is forced to guess."""

    name, model = "fixed", "fixed"

    def generate(self, requests, sampling):
        out = []
        for r in requests:
            forced = r.messages[0]["role"] == "system"
            q = r.messages[-1]["content"]
            if "Peru" in q:
                text = "Lima." if forced else "I'm not sure, sorry."  # knows it, refuses: over-refusal
            elif "Chile" in q:
                text = "Santiago." if forced else "The capital of Chile is Santiago."  # correct
            elif "Cuba" in q:
                text = "Madrid." if forced else "It is Madrid."  # wrong
            else:
                text = "Oslo." if forced else "I don't know."  # refusal, and does not know
            out.append([Completion(text=text, prompt_tokens=1, completion_tokens=1, finish_reason="stop")])
        return out


def test_the_evaluation_counts_refusals_over_refusals_and_wrong_answers():
    capitals = [("Peru", "Lima"), ("Chile", "Santiago"), ("Cuba", "Havana"), ("Mali", "Bamako")]
    probes = [Probe(id=c, question=f"What is the capital of {c}?", answer=a) for c, a in capitals]
    metrics, results = evaluate(FixedReplies(), probes)
    assert [r.outcome for r in results] == ["over_refusal", "correct", "wrong", "refusal"]
    assert metrics == {
        "probes": 4, "refusal_rate": 0.5, "over_refusal_rate": 0.25, "wrong_answer_rate": 0.25,
        "correct_rate": 0.25, "knows_rate": 0.5, "over_refusal_share": 0.5,
        "counts": {"correct": 1, "wrong": 1, "refusal": 1, "over_refusal": 1},
    }  # fmt: skip


def test_synth_eval_factuality_over_http(tmp_path, capsys):
    from openai_server import OpenAIServer

    with OpenAIServer(engine=FixedReplies()) as srv:
        args = ["--engine", "openai", "--model", "fake", "--base-url", srv.base_url, "--limit", "6"]
        code = main(["eval", "factuality", *args, "--out", str(tmp_path / "eval.json")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((tmp_path / "eval.json").read_text())
    assert printed["probes"] == 6 and report["metrics"]["probes"] == 6 and len(report["results"]) == 6
    assert report["results"][0]["id"] == "peru-capital" and report["results"][0]["outcome"] == "over_refusal"
    assert main(["eval", "factuality", "--probes", str(tmp_path / "none.jsonl")]) == 2


class Trained(FixedReplies):
    """FixedReplies after training: it answers about Peru instead of refusing."""

    def generate(self, requests, sampling):
        out = super().generate(requests, sampling)
        for r, completions in zip(requests, out, strict=True):
            if r.messages[0]["role"] != "system" and "Peru" in r.messages[-1]["content"]:
                completions[0] = Completion(text="The capital of Peru is Lima.", prompt_tokens=1,
                                            completion_tokens=1, finish_reason="stop")  # fmt: skip
        return out


def test_synth_eval_factuality_before_and_after_training(tmp_path, capsys):
    """--baseline: the model before training on the same probes, and the change."""
    from openai_server import OpenAIServer

    def last_json() -> dict:
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    with (
        OpenAIServer(engine=FixedReplies(), model="base") as before,
        OpenAIServer(engine=Trained(), model="trained") as after,
    ):
        args = ["--engine", "openai", "--limit", "6", "--out", str(tmp_path / "eval.json")]
        assert main(["eval", "factuality", *args, "--model", "base", "--base-url", before.base_url]) == 0
        base = last_json()
        assert main(["eval", "factuality", *args, "--model", "trained", "--base-url", after.base_url]) == 0
        trained = last_json()
        both = ["--model", "trained", "--base-url", after.base_url, "--baseline", "base",
                "--baseline-base-url", before.base_url]  # fmt: skip
        assert main(["eval", "factuality", *args, *both]) == 0
        compared = last_json()
    # peru-capital: over-refused before, correct after; peru-continent: refused before, wrong after
    assert base["counts"]["over_refusal"] - trained["counts"]["over_refusal"] == 1
    assert base["counts"]["refusal"] - trained["counts"]["refusal"] == 1
    assert trained["counts"]["correct"] - base["counts"]["correct"] == 1
    assert trained["counts"]["wrong"] - base["counts"]["wrong"] == 1
    rates = ("refusal_rate", "over_refusal_rate", "wrong_answer_rate", "correct_rate", "knows_rate")
    for key in (*rates, "probes", "counts"):  # the same as two separate evaluations
        assert compared["baseline"][key] == base[key] and compared[key] == trained[key], key
    assert compared["baseline"]["model"] == "base" and compared["model"] == "trained"
    assert compared["change"] == {
        "refusal_rate": -0.3333, "over_refusal_rate": -0.1667, "wrong_answer_rate": 0.1667,
        "correct_rate": 0.1667, "knows_rate": 0.0,
    }  # fmt: skip
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["baseline"]["probes"] == 6 and len(report["baseline_results"]) == 6
    assert [r["outcome"] for r in report["baseline_results"][:2]] == ["over_refusal", "refusal"]
    assert [r["outcome"] for r in report["results"][:2]] == ["correct", "wrong"]


# -- on the embedded model ------------------------------------------------------------------------
@pytest.mark.slow
def test_the_recipe_and_the_evaluation_on_the_embedded_model(tmp_path, hf_engine):
    """Both on the real 135M model: what it writes and how it judges is weak; the mechanics hold."""
    import pyarrow.parquet as pq

    cfg = FactualityConfig(out=str(tmp_path / "r"), snippets_limit=2, k=2, max_tokens=24, judge_max_tokens=6)
    run = run_recipe("factuality", cfg, hf_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    for f in funnel.values():
        assert f["done"] and sum(f["reasons"].values()) == f["rejected"], f
    assert funnel["write_questions"]["kept"] + funnel["write_questions"]["rejected"] == 2
    assert funnel["answer"]["rows_in"] == funnel["write_questions"]["kept"]
    for r in run.store.iter_records("informativeness"):
        assert 1 <= r.scores["correctness"] <= 10 and 1 <= r.scores["informativeness"] <= 10
        assert r.provenance.model == "SmolLM2-135M-Instruct"
    for stage in ("known_answers", "consistently_wrong"):
        n = funnel[stage]["kept"] + funnel[stage]["rejected"]
        assert n == funnel["informativeness"]["kept"]  # every judged answer gets the branch's verdict
    outcomes = run.store.get_meta("outcomes")
    print("outcomes:", outcomes)
    run.close()

    # the export: whatever the yield, a dataset with its card (the corpus's licence in it)
    assert main(["export", str(tmp_path / "r"), "--to", str(tmp_path / "ds")]) == 0
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "## Source data" in card and "countryinfo 1.0.1" in card
    sft = sum(pq.read_table(f).num_rows for f in (tmp_path / "ds" / "sft").glob("*.parquet"))
    pairs = sum(pq.read_table(f).num_rows for f in (tmp_path / "ds" / "preference").glob("*.parquet"))
    assert (sft, pairs) == (outcomes["known-answer sft"] + outcomes["refusal sft"], outcomes["refusal pairs"])

    probes = list(read_probes(SHIPPED_PROBES, limit=4))
    metrics, results = evaluate(hf_engine, probes, max_tokens=12)
    print("eval:", metrics)
    assert metrics["probes"] == 4 == sum(metrics["counts"].values())
    assert all(r.reply and r.forced for r in results)


@pytest.mark.slow  # a dozen subprocesses
def test_killed_runs_resume_to_the_rows_of_an_uninterrupted_run(tmp_path):
    """kill -9 at five points, then the same command: exactly the rows of a run never stopped, no
    finished batch twice (the scripted model behind a real HTTP server, for the subprocesses)."""
    import subprocess

    from conftest import ScriptedEngine
    from openai_server import OpenAIServer
    from test_multilingual import (
        committed,
        events,
        first_difference,
        run_and_kill,
        snapshot,
        stage_done,
        synth_cmd,
    )

    with OpenAIServer(engine=ScriptedEngine(scripted), delay_s=0.01) as srv:

        def args(out: Path) -> list[str]:
            return synth_cmd(
                "run", "factuality", "--out", str(out), "--engine", "openai", "--model", "fake",
                "--base-url", srv.base_url, "--snippets-limit", "4", "--k", "3", "--batch-size", "1",
            )  # fmt: skip

        reference = tmp_path / "reference"
        subprocess.run(args(reference), check=True, capture_output=True, timeout=300)
        out = tmp_path / "killed"
        points = [
            lambda evs: any(e["event"] == "run_start" for e in evs),
            committed("write_questions", 2),
            committed("answer", 1),
            stage_done("correctness"),
            committed("known_answers", 1),
        ]
        for point in points:
            assert run_and_kill(args(out), out, point), events(out)[-3:]
        subprocess.run(args(out), check=True, capture_output=True, timeout=300)

    got, want = snapshot(out), snapshot(reference)
    assert first_difference(got["rows"], want["rows"]) is None
    assert got == want and want["meta"]["outcomes"]["refusal sft"] == 1
    evs = events(out)
    assert sum(e["event"] == "run_done" for e in evs) == 1
    batches = [(e["stage"], e["batch"]) for e in evs if e["event"] == "batch_committed"]
    assert len(batches) == len(set(batches)), "a finished batch was committed twice"
