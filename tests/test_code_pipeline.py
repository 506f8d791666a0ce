"""The code recipe's mechanics with a scripted model whose code is known right or wrong, run in the real
sandbox: the repair loop, the outcome funnel, preference pairs checked by execution, translation kept
only when it reproduces the recorded I/O cases, backtranslation, the declared outputs, resume after a
crash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import ScriptedEngine

from synth.config import ConfigError
from synth.export import export_dataset
from synth.prompt_sources import prompts_of_run
from synth.recipe import run_recipe
from synth.recipes.code import DEFAULT_CORPUS, CodeConfig
from synth.records import PreferenceRecord, SFTRecord
from synth.stages.code.items import Candidate, IOCase, Translation
from synth.stats import iter_outputs, summarize
from synth.store import Store

PROBLEM = (
    "Problem: Write a function `double(x)` that returns twice the number x. Example: double(3) returns 6."
)
BUGGY = "```python\ndef double(x):\n    return x * 3\n```"
RIGHT = "Here is a solution:\n```python\ndef double(x):\n    return x * 2\n```"
FIXED = "```python\ndef double(x):\n    return x + x\n```"
BROKEN = "```python\ndef double(x)\n    return x * 2\n```"
TESTS = "```python\nassert double(3) == 6\nassert double(0) == 0\nassert double(-2) == -4\n```"
WRONG_TESTS = "```python\nassert double(3) == 7\n```"
JS = "```javascript\nfunction double(x) {\n  return 2 * x;\n}\n```"
PHP_WRONG = "```php\n<?php\nfunction double($x) { return $x + 1; }\n```"
DOC = "The module defines double, which takes a number x and returns x multiplied by two."


def reply(msgs, j, sampling):
    """The scripted model: sample 0 is buggy and repaired, 1 right, 2 broken for good."""
    last = msgs[-1]["content"]
    if "programming problem inspired by" in last:
        return PROBLEM
    if last.startswith("This failed"):
        if "def double(x)\n" in msgs[-2]["content"]:
            return "I cannot fix it."  # sample 2 stays broken: no_change
        return FIXED
    if "Write a Python solution" in last:
        return [BUGGY, RIGHT, BROKEN][j]
    if "Write tests for this solution" in last:
        return TESTS
    if "to JavaScript" in last:
        return JS
    if "to PHP" in last:
        return PHP_WRONG
    if last.startswith("Document this code"):
        return DOC
    if "documentation describes" in last:
        return "```python\ndef double(x):\n    return 2 * x\n```"
    if "Rate the rewritten program" in last:
        return "Score: 8\nRationale: Same behaviour."
    raise AssertionError(f"unexpected prompt: {last[:80]}")


@pytest.fixture
def corpus(tmp_path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    shutil.copy(Path(DEFAULT_CORPUS) / "primes.py", d / "primes.py")
    return d


def config(out, corpus, **kw) -> CodeConfig:
    base = dict(out=str(out), corpus=str(corpus), k=3, problems_per_snippet=1, repair_rounds=1, batch_size=2)
    return CodeConfig(**{**base, **kw})


def funnel(store: Store) -> dict[str, dict]:
    return {f["stage"]: f for f in store.funnel()}


def test_repair_loop_funnel_and_outputs(tmp_path, corpus):
    run = run_recipe("code", config(tmp_path / "run", corpus), engine=ScriptedEngine(reply))
    f = funnel(run.store)
    assert list(f) == [
        "snippets", "write_problems", "solve", "write_tests", "execute_round0", "repair_round1",
        "execute_round1", "solutions", "preference_pairs", "io_cases", "translate_javascript",
        "run_javascript", "translate_php", "run_php", "bt_document", "bt_regenerate", "bt_judge",
    ]  # fmt: skip
    # several output stages of each kind, declared by the recipe (no collecting stage)
    assert run.store.get_meta("outputs") == {
        "prompts": "write_problems",
        "sft": ["solutions", "run_javascript", "run_php", "bt_judge"],
        "preference": ["preference_pairs"],
    }
    assert run.store.get_meta("capability") == "code"
    # first try: the right sample passes, the buggy one fails its asserts, the broken one is caught by ruff
    assert (f["execute_round0"]["kept"], f["execute_round0"]["reasons"]) == (
        1, {"syntax_error": 1, "test_failed": 1},
    )  # fmt: skip
    assert f["repair_round1"]["reasons"] == {"no_change": 1}
    assert (f["execute_round1"]["rows_in"], f["execute_round1"]["kept"]) == (1, 1)  # passed after repair 1
    assert f["solutions"]["reasons"] == {"never_passed": 1}
    outcomes = run.store.get_meta("outcomes")
    assert outcomes == {
        "never_passed (no_change)": 1, "passed_after_repair_1": 1, "passed_first_try": 1,
    }  # fmt: skip
    solved = {r.id: r for r in run.store.records("solutions")}
    s0 = solved["primes-p0-s0"]
    assert [v.reason for v in s0.verdicts if v.stage == "solutions"] == ["passed_after_repair_1"]
    assert isinstance(s0, SFTRecord) and s0.meta["outcome"] == "passed_after_repair_1"
    assert [a["reason"] for a in s0.meta["attempts"]] == ["test_failed", None]
    assert "AssertionError" in s0.meta["attempts"][0]["feedback"]
    assert s0.messages[0].content.startswith("Write a function `double(x)`")
    assert s0.response == "```python\ndef double(x):\n    return x + x\n```"
    s2 = solved["primes-p0-s2"]  # never passed: stays a typed candidate, rejected with its last failure
    assert isinstance(s2, Candidate) and not s2.kept and s2.meta["last_failure"] == "no_change"
    assert [a.reason for a in s2.attempts] == ["syntax_error"] and s2.repairs == ["I cannot fix it."]

    # preference: repaired s0 vs its own buggy first try, and the passing s1 vs the never-passing s2,
    # both confirmed failing on the passing tests in the sandbox
    pairs = {r.id: r for r in run.store.records("preference_pairs")}
    assert set(pairs) == {"primes-p0-s0-repair-pair", "primes-p0-s1-vs-primes-p0-s2"}
    rp = pairs["primes-p0-s0-repair-pair"]
    assert isinstance(rp, PreferenceRecord) and rp.kept and rp.strength == "better"
    assert "x * 3" in rp.rejected.content and "x + x" in rp.chosen.content
    assert rp.meta["rejected_fails_with"] == "test_failed"
    assert pairs["primes-p0-s1-vs-primes-p0-s2"].meta["rejected_fails_with"] == "runtime_error"

    # translation: JS reproduces the recorded cases, the PHP one does not
    cases = run.store.records("io_cases")[0]
    assert isinstance(cases, Translation) and IOCase(fn="double", args=[3], result=6) in cases.cases
    assert (f["run_javascript"]["kept"], f["run_php"]["reasons"]) == (2, {"wrong_output": 2})

    # backtranslation of the corpus file and the two passing solutions, judged 8 >= 7
    assert (f["bt_document"]["rows_in"], f["bt_judge"]["kept"]) == (3, 3)
    bt = next(r for r in run.store.records("bt_judge") if r.id == "bt-primes")
    assert bt.messages[0].content.startswith("Document this code:\n```python\n") and bt.response == DOC

    sft, pref = list(iter_outputs(run.store, "sft")), list(iter_outputs(run.store, "preference"))
    assert len(sft) == 2 + 2 + 3 and len(pref) == 2
    assert {r.provenance.template for r in sft} == {"code/solve", "code/translate", "code/document"}
    assert all(isinstance(r, SFTRecord) for r in sft)
    summary = summarize(run.store)
    run.close()
    # `synth export` reads the declared outputs unchanged
    path = export_dataset(sft, pref, tmp_path / "ds", summary, test_fraction=0.0)
    rows = pd.concat(pd.read_parquet(p) for p in Path(path).rglob("*.parquet"))
    assert len(rows) == len(sft) + len(pref)
    # rejection sampling can take the run's problems as its prompts (Problem.as_prompt)
    [prompt] = prompts_of_run(tmp_path / "run")
    assert prompt.id == "primes-p0" and prompt.messages[0].content == PROBLEM.removeprefix("Problem: ")


def test_wrong_tests_are_repaired_without_a_preference_pair(tmp_path, corpus):
    def wrong_tests(msgs, j, sampling):
        last = msgs[-1]["content"]
        if "Write tests for this solution" in last:
            return WRONG_TESTS
        if last.startswith("This failed"):
            assert "assert double(3) == 7" in last and "AssertionError" in last
            return "The tests were wrong.\n" + TESTS.replace("```python\n", "```python\n# tests\n")
        return reply(msgs, 1, sampling)  # always the right solution

    run = run_recipe(
        "code", config(tmp_path / "run", corpus, k=1, languages=[]), engine=ScriptedEngine(wrong_tests)
    )
    sol = run.store.records("solutions")[0]
    assert sol.meta["outcome"] == "passed_after_repair_1"
    assert sol.meta["attempts"][0]["code"] == sol.meta["code"]  # only the tests changed
    assert run.store.records("preference_pairs") == []
    assert "io_cases" not in funnel(run.store)
    run.close()


def test_threshold_drops_unfaithful_backtranslations(tmp_path, corpus):
    def low(msgs, j, sampling):
        if "Rate the rewritten program" in msgs[-1]["content"]:
            return "Score: 3\nRationale: Different."
        return reply(msgs, j, sampling)

    run = run_recipe("code", config(tmp_path / "run", corpus, languages=[]), engine=ScriptedEngine(low))
    assert funnel(run.store)["bt_judge"]["reasons"] == {"below_threshold": 3}
    assert all(r.scores["faithfulness"] == 3.0 for r in run.store.records("bt_judge"))
    run.close()


class Crash(RuntimeError):
    pass


def test_a_crashed_run_resumes_to_the_same_rows(tmp_path, corpus):
    ref = run_recipe("code", config(tmp_path / "ref", corpus), engine=ScriptedEngine(reply))
    expected = {f["stage"]: (f["kept"], f["rejected"]) for f in ref.store.funnel()}
    ref_ids = {s: [r.id for r in ref.store.records(s)] for s in expected}
    ref.close()

    calls = {"n": 0}

    def crashing(msgs, j, sampling):
        calls["n"] += 1
        if calls["n"] == 9:  # after problems, solutions and tests: inside the repair round
            raise Crash("killed")
        return reply(msgs, j, sampling)

    with pytest.raises(Crash):
        run_recipe("code", config(tmp_path / "run", corpus), engine=ScriptedEngine(crashing))
    before = funnel(Store(tmp_path / "run"))
    assert before["execute_round0"]["done"] and not before["repair_round1"]["done"]
    asked = []

    def recording(msgs, j, sampling):
        asked.append(msgs[-1]["content"])
        return reply(msgs, j, sampling)

    run = run_recipe("code", config(tmp_path / "run", corpus), engine=ScriptedEngine(recording))
    assert {f["stage"]: (f["kept"], f["rejected"]) for f in run.store.funnel()} == expected
    assert {s: [r.id for r in run.store.records(s)] for s in expected} == ref_ids
    # finished stages were not redone: no problem, solution or test prompt reached the model again
    assert asked and not [a for a in asked if "Write a Python solution" in a or "Write tests" in a]
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    batches = [(e["stage"], e["batch"]) for e in events if e["event"] == "batch_committed"]
    assert len(batches) == len(set(batches)), "a committed batch was run twice"
    run.close()


def test_config_rejects_unknown_languages(tmp_path):
    with pytest.raises(ConfigError, match="cpp"):
        CodeConfig(out=str(tmp_path), languages=["javascript", "cpp"])
    with pytest.raises(ConfigError, match="backend must be one of local, docker"):
        CodeConfig(out=str(tmp_path), backend="vm")
    with pytest.raises(ConfigError, match=r"repair_rounds must be in \[0, inf\)"):
        CodeConfig(out=str(tmp_path), repair_rounds=-1)


def test_synth_run_code_round_2_stamps_every_row_and_keeps_repair_rounds_apart(tmp_path, corpus):
    """`synth run code --round 2` (the CLI, a scripted model over HTTP): every stored row belongs to
    post-training round 2; the repair loop's own counter is ``repair_round``, never ``round``."""
    from openai_server import OpenAIServer

    from pipelines.cli import main

    out = tmp_path / "run"
    with OpenAIServer(engine=ScriptedEngine(reply)) as srv:
        code = main(["run", "code", "--out", str(out), "--corpus", str(corpus), "--k", "3",
                     "--problems-per-snippet", "1", "--repair-rounds", "1", "--batch-size", "2",
                     "--round", "2", "--engine", "openai", "--model", "fake",
                     "--base-url", srv.base_url])  # fmt: skip
    assert code == 0
    store = Store(out, read_only=True)
    stages = [f["stage"] for f in store.funnel()]
    assert "execute_round1" in stages and "io_cases" in stages and "bt_judge" in stages
    rows = [r for s in stages for r in store.records(s)]
    assert rows and {r.provenance.round for r in rows} == {2}, {(r.id, r.provenance.round) for r in rows}
    sft = list(iter_outputs(store, "sft"))
    assert sft and {r.provenance.round for r in sft} == {2}
    solved = {r.id: r for r in store.records("solutions") if r.kept}
    s0 = solved["primes-p0-s0"]  # passed after repair 1, in post-training round 2
    assert (s0.meta["repair_round"], s0.provenance.round) == (1, 2) and "round" not in s0.meta
    assert [a["repair_round"] for a in s0.meta["attempts"]] == [0, 1]
    assert solved["primes-p0-s1"].meta["repair_round"] == 0
    [s2] = [r for r in store.records("solutions") if r.id == "primes-p0-s2"]
    assert isinstance(s2, Candidate) and s2.repair_round == 0 and s2.provenance.round == 2
    store.close()


def test_candidates_stored_before_the_rename_still_load():
    old = Candidate(id="c", problem_id="p", snippet_id="s", problem="p").model_dump()
    old["round"] = old.pop("repair_round") + 1
    old["attempts"] = [{"round": 1, "code": None, "tests": None, "passed": False, "reason": "no_code"}]
    back = Candidate.model_validate(old)
    assert back.repair_round == 1 and back.attempts[0].repair_round == 1
