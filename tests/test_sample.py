"""Rejection sampling (the ``rejection-sampling`` recipe): best of K by reward, best across rounds,
resume, export, CLI; and the prompt sources it reads (``synth.prompt_sources``).

A scripted policy answers with known texts and a hand-set reward model (test_reward_scorer.py) rewards
the share of "good" tokens, so which sample must win is known; every pick is also checked against the
reward model's own scores."""

from __future__ import annotations

import json
from typing import Literal

import click.testing
import pytest
from conftest import ScriptedEngine
from test_reward_scorer import save_keyword_reward_model
from typer.testing import CliRunner

from synth.config import ConfigError
from synth.export import load_export
from synth.pipeline import Run
from synth.prompt_sources import prompts_of_run
from synth.recipe import get_recipe
from synth.recipes.rejection_sampling import SampleConfig, run_sample
from synth.records import Item, Message, Provenance, SFTRecord, register_kind
from synth.stages.reward import RewardModel
from synth.store import Store
from train.tiny import embedded_tokenizer, save_tiny_causal_lm

PROMPTS = {"p1": "Tell me about tea.", "p2": "Describe the rain in spring.", "p3": "Name a tree."}
ROUND_1 = {  # per prompt, the K = 4 samples; "" is an empty completion
    "p1": ["bad bad bad", "good bad bad", "good good good", "good good bad"],
    "p2": ["good bad bad", "bad bad bad", "bad bad bad", ""],
    "p3": ["bad", "good good", "good", "bad bad"],
}
BEST_1 = {"p1": "good good good", "p2": "good bad bad", "p3": "good good"}
WORST_1 = {"p1": "bad bad bad", "p2": "bad bad bad", "p3": "bad bad"}  # equal rewards: the later id
ROUND_2 = {  # p1 and p3 do worse than in round 1, p2 better
    "p1": ["good bad bad", "bad bad bad", "good good bad", "bad"],
    "p2": ["good good good", "bad", "good bad", "bad bad"],
    "p3": ["bad", "bad bad", "good bad bad", "bad bad bad"],
}


def scripted(table: dict[str, list[str]]) -> ScriptedEngine:
    by_text = {text: pid for pid, text in PROMPTS.items()}
    return ScriptedEngine(lambda msgs, j, sampling: table[by_text[msgs[-1]["content"]]][j])


class CountingRM:
    """Wraps a reward model: counts score calls and can fail on the n-th one."""

    def __init__(self, inner: RewardModel, fail_on: int | None = None) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0

    def score(self, prompts, responses):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("reward model died")
        return self.inner.score(prompts, responses)


class FailingEngine(ScriptedEngine):
    def __init__(self, table, fail_on: int) -> None:
        super().__init__(scripted(table).reply)
        self.fail_on = fail_on

    def generate(self, requests, sampling):
        if len(self.calls) + 1 == self.fail_on:
            self.calls.append(-1)
            raise RuntimeError("engine died")
        return super().generate(requests, sampling)


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


@pytest.fixture(scope="module")
def rm_dir(tok, tmp_path_factory):
    return save_keyword_reward_model(tmp_path_factory.mktemp("rm"), tok)


@pytest.fixture(scope="module")
def rm(rm_dir):
    return RewardModel(rm_dir)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": t}) + "\n" for i, t in PROMPTS.items()))
    return path


def config(prompts, rm_dir, out, **kw) -> SampleConfig:
    kw = {"k": 4, "batch_size": 2, **kw}
    return SampleConfig(prompts=str(prompts), reward_model=str(rm_dir), out=str(out), **kw)


def final_rows(run, stage=None) -> dict[str, object]:
    [stage] = [stage] if stage else run.store.get_meta("outputs")["sft"]
    return {r.meta["prompt_id"]: r for r in run.store.records(stage, kept=True)}


def export(run_dir, to):
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["export", str(run_dir), "--to", str(to), "--test-fraction", "0"])
    assert result.exit_code == 0, result.output
    return to


@pytest.fixture(scope="module")
def round_1(prompts_file, rm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "round1"
    run = run_sample(config(prompts_file, rm_dir, out), engine=scripted(ROUND_1))
    run.close()
    return out


def test_best_of_k_keeps_the_highest_reward(round_1, rm):
    store = Store(round_1, read_only=True)
    try:
        assert store.get_meta("outputs") == {
            "sft": ["best_of_k"],
            "preference": ["preference_pairs"],
            "prompts": "prompts",
        }
        stages = [f["stage"] for f in store.funnel()]
        assert stages == ["prompts", "sample", "rm_score", "best_of_k", "preference_pairs"]
        assert all(f["done"] for f in store.funnel())
        scored = store.records("rm_score")
        assert len(scored) == 12 and [r.id for r in scored if not r.kept] == ["p2-3"]  # the empty one
        best = {r.meta["prompt_id"]: r for r in store.records("best_of_k", kept=True)}
        for pid, text in PROMPTS.items():
            samples = [r for r in scored if r.meta["prompt_id"] == pid and r.kept]
            expected = rm.score(
                [[{"role": "user", "content": text}]] * len(samples), [r.response for r in samples]
            )
            assert [r.scores["rm"] for r in samples] == pytest.approx(expected, rel=1e-5)  # the RM's scores
            top = max(range(len(samples)), key=lambda i: expected[i])
            assert best[pid].id == samples[top].id and best[pid].response == BEST_1[pid]
            assert best[pid].provenance.template == "rejection_sampling"
            assert (
                best[pid].provenance.capability == "general"
                and best[pid].provenance.model == "scripted-model"
            )
        pairs = {r.meta["prompt_id"]: r for r in store.records("preference_pairs")}
        assert set(pairs) == set(PROMPTS)
        gaps = {}
        for pid, pair in pairs.items():
            assert (pair.chosen.content, pair.rejected.content) == (BEST_1[pid], WORST_1[pid])
            gaps[pid] = pair.chosen.score - pair.rejected.score
            assert gaps[pid] > 0
        # strengths rank the run's reward gaps (synth.stages.select.strengths_by_gap)
        widest = max(gaps, key=gaps.get)
        assert pairs[widest].strength == "significantly_better"
    finally:
        store.close()


def test_run_exports_as_a_dataset(round_1, tmp_path):
    out = export(round_1, tmp_path / "ds")
    sft = load_export(out, "sft")["train"]
    assert sorted(row["messages"][-1]["content"] for row in sft) == sorted(BEST_1.values())
    assert all(json.loads(row["scores"])["rm"] > 0 for row in sft)
    pref = load_export(out, "preference")["train"]
    assert len(pref) == 3 and all(row["chosen_score"] > row["rejected_score"] for row in pref)


def test_top_fraction_keeps_the_best_prompts(prompts_file, rm_dir, tmp_path):
    run = run_sample(config(prompts_file, rm_dir, tmp_path / "r", top_fraction=0.3), engine=scripted(ROUND_1))
    assert run.store.get_meta("outputs")["sft"] == ["top_fraction"]
    best = run.store.records("best_of_k", kept=True)
    top = run.store.records("top_fraction", kept=True)
    assert [r.id for r in top] == [max(best, key=lambda r: r.scores["rm"]).id]
    run.close()


@pytest.mark.parametrize(
    ("prompts_from", "previous_from"),
    [("export", "export"), ("jsonl", "run"), ("jsonl", "jsonl"), ("run", "export")],
)
def test_best_across_rounds_keeps_the_better_previous_row(
    round_1, prompts_file, rm_dir, tmp_path, prompts_from, previous_from
):
    exported = export(round_1, tmp_path / "round1_ds")
    if previous_from == "jsonl":
        previous = tmp_path / "previous.jsonl"
        store = Store(round_1, read_only=True)
        previous.write_text("".join(r.to_json() + "\n" for r in store.records("best_of_k", kept=True)))
        store.close()
    else:
        previous = exported if previous_from == "export" else round_1
    prompts = {"export": exported, "run": round_1, "jsonl": prompts_file}[prompts_from]
    cfg = config(prompts, rm_dir, tmp_path / "round2", keep_best_across_rounds=str(previous), round=1)
    run = run_sample(cfg, engine=scripted(ROUND_2))

    assert run.store.get_meta("outputs")["sft"] == ["best_across_rounds"]
    by_text = {t: pid for pid, t in PROMPTS.items()}
    rows = {by_text[r.prompt[-1].content]: r for r in run.store.records("best_across_rounds", kept=True)}
    assert {pid: r.response for pid, r in rows.items()} == {
        "p1": "good good good",  # round 1's best beats round 2's
        "p2": "good good good",  # round 2's best beats round 1's
        "p3": "good good",
    }
    assert rows["p1"].provenance.round == 0 and rows["p1"].meta["carried_over"]
    assert rows["p1"].id.endswith("-prev") and rows["p1"].meta["previous_id"] == "p1-2"
    assert rows["p2"].provenance.round == 1 and rows["p2"].verdicts[-1].reason == "beats_previous_round"
    assert rows["p2"].meta["previous_round_score"] < rows["p2"].scores["rm"]
    rejected = [r for r in run.store.records("best_across_rounds") if not r.kept]
    assert sorted(r.response for r in rejected) == ["good bad bad", "good good bad"]  # round 2's p3, p1
    assert {r.verdicts[-1].reason for r in rejected} == {"previous_round_better"}
    # the previous best takes part in the preference pair of its prompt
    pairs = {by_text[r.prompt[-1].content]: r for r in run.store.records("preference_pairs")}
    assert (pairs["p1"].chosen.content, pairs["p1"].rejected.content) == ("good good good", "bad")
    run.close()

    out = export(run.dir, tmp_path / "round2_ds")
    assert sorted(r["messages"][-1]["content"] for r in load_export(out, "sft")["train"]) == sorted(
        ["good good good", "good good good", "good good"]
    )


def snapshot(run):
    [stage] = run.store.get_meta("outputs")["sft"]
    return sorted((r.id, r.response, r.scores["rm"]) for r in run.store.records(stage, kept=True))


def committed(run_dir, stage):
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e["batch"] for e in events if e["event"] == "batch_committed" and e["stage"] == stage]


def test_resume_after_interruption_redoes_no_finished_batch(prompts_file, rm_dir, rm, tmp_path):
    reference = run_sample(
        config(prompts_file, rm_dir, tmp_path / "ref", batch_size=1), engine=scripted(ROUND_1)
    )
    cfg = config(prompts_file, rm_dir, tmp_path / "run", batch_size=1)

    # 1. the policy dies on its second batch
    with pytest.raises(RuntimeError, match="engine died"):
        run_sample(cfg, engine=FailingEngine(ROUND_1, fail_on=2), reward_model=CountingRM(rm))
    assert len(committed(tmp_path / "run", "sample")) == 1

    # 2. sampling resumes at batch 2; the reward model dies on its second batch (4 samples a batch)
    engine = scripted(ROUND_1)
    with pytest.raises(RuntimeError, match="reward model died"):
        run_sample(cfg, engine=engine, reward_model=CountingRM(rm, fail_on=2))
    assert engine.calls == [1, 1]  # the two prompts not sampled yet, not the first again
    assert len(committed(tmp_path / "run", "rm_score")) == 1

    # 3. scoring resumes; nothing is sampled again
    engine, counting = scripted(ROUND_1), CountingRM(rm)
    run = run_sample(cfg, engine=engine, reward_model=counting)
    assert engine.calls == [] and counting.calls == 2
    for stage in ("sample", "rm_score"):
        batches = committed(tmp_path / "run", stage)
        assert len(batches) == len(set(batches)) == 3
    assert snapshot(run) == snapshot(reference)

    # 4. a finished run resumes to the same rows without loading anything
    again = run_sample(cfg, engine=FailingEngine(ROUND_1, fail_on=1), reward_model=CountingRM(rm, fail_on=1))
    assert snapshot(again) == snapshot(reference)
    with pytest.raises(ValueError, match="different configuration"):
        run_sample(config(prompts_file, rm_dir, tmp_path / "run", batch_size=1, k=2), engine=engine)
    for r in (reference, run, again):
        r.close()


def cli_app():
    from pipelines.cli import cli

    return cli


def test_cli_on_a_tiny_policy(prompts_file, rm_dir, tok, tmp_path):
    policy = save_tiny_causal_lm(tmp_path / "policy", tok)
    out = tmp_path / "run"
    args = ["sample", "--prompts", str(prompts_file), "--policy", str(policy),
            "--reward-model", str(rm_dir), "--out", str(out), "--k", "2", "--max-tokens", "4",
            "--top-fraction", "0.5", "--seed", "1"]  # fmt: skip
    result = click.testing.CliRunner().invoke(cli_app(), args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    store = Store(out, read_only=True)
    config = store.get_meta("config")
    assert (config["k"], config["model"], config["top_fraction"]) == (2, str(policy), 0.5)
    samples = store.records("sample")
    assert len(samples) == 6 and {r.provenance.engine for r in samples} == {"hf"}
    assert store.get_meta("outputs")["sft"] == ["top_fraction"]
    store.close()
    export(out, tmp_path / "ds")

    missing = click.testing.CliRunner().invoke(
        cli_app(), [*args[:6], str(tmp_path / "nope"), "--out", str(tmp_path / "r2")]
    )
    assert missing.exit_code == 2 and "reward model not found" in missing.output


@pytest.mark.slow
def test_embedded_policy_smoke(prompts_file, rm_dir, rm, tmp_path):
    cfg = config(prompts_file, rm_dir, tmp_path / "run", k=2, max_tokens=12, temperature=1.0)
    run = run_sample(cfg)
    scored = [r for r in run.store.records("rm_score") if r.kept]
    best = final_rows(run)
    assert best and scored
    for pid, row in best.items():
        group = [r for r in scored if r.meta["prompt_id"] == pid]
        assert row.scores["rm"] == max(r.scores["rm"] for r in group)
        assert row.provenance.model == "SmolLM2-135M-Instruct"
    run.close()


def test_recipe_is_registered_with_the_papers_defaults(prompts_file, rm_dir, tmp_path):
    spec = get_recipe("rejection-sampling")
    assert spec.config is SampleConfig and "Llama 2" in spec.doc
    cfg = SampleConfig(prompts="p.jsonl", reward_model="rm", out="out")
    assert (cfg.k, cfg.top_p, cfg.top_fraction) == (10, 1.0, None)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="top_fraction"):
            config(prompts_file, rm_dir, tmp_path / "r", top_fraction=bad)
    with pytest.raises(FileNotFoundError, match="reward model not found"):
        run_sample(
            SampleConfig(prompts=str(prompts_file), reward_model=str(tmp_path), out=str(tmp_path / "r"))
        )
    assert not (tmp_path / "r").exists()  # refused before the run directory is made


@register_kind
class _Problem(Item):
    kind: Literal["rs_test_problem"] = "rs_test_problem"
    question: str

    def as_prompt(self) -> list[Message] | None:
        return [Message(role="user", content=self.question)] if self.question else None


def test_prompts_of_run_reads_the_declared_prompt_stage(tmp_path):
    run = Run(tmp_path / "run", config={"recipe": "test"})
    problems = [
        _Problem(id="a", question="Sort a list.", provenance=Provenance(capability="code")),
        _Problem(id="b", question=""),  # stands for no chat prompt: left out
        _Problem(id="c", question="Reverse a string.", scores={"judge": 2.0}),
    ]
    run.source("problems", problems)
    run.source("seeds", [SFTRecord(id="s", messages=[Message(role="user", content="not the prompts")])])
    run.store.set_meta("outputs", {"prompts": "problems", "sft": ["seeds"], "preference": []})
    run.store.set_meta("capability", "code")
    run.close()
    got = list(prompts_of_run(tmp_path / "run"))
    assert [(r.id, r.messages[0].content, r.provenance.capability) for r in got] == [
        ("a", "Sort a list.", "code"),
        ("c", "Reverse a string.", "code"),
    ]
    assert all(isinstance(r, SFTRecord) and r.response is None and not r.scores for r in got)


def test_prompts_of_run_before_declared_outputs_reads_seeds(tmp_path):
    seed = SFTRecord(
        id="s1",
        messages=[Message(role="user", content="Hi"), Message(role="assistant", content="Hello")],
        provenance=Provenance(capability="general"),
        meta={"prompt_id": "elsewhere"},
    )
    run = Run(tmp_path / "old", config={"recipe": "old"})
    run.source("seeds", [seed])
    run.source("top_quartile", [seed.model_copy(update={"id": "s1-0"})])
    run.store.set_meta("outputs", {"sft": "top_quartile", "preference": "preference_pairs"})
    run.close()
    [got] = prompts_of_run(tmp_path / "old")
    assert (got.id, [m.content for m in got.messages], got.meta) == ("s1", ["Hi"], {})
    assert got.group_key == "s1"  # the prompt's own id, not its earlier run's grouping

    run = Run(tmp_path / "none", config={"recipe": "x"})
    run.store.set_meta("outputs", {"prompts": "missing", "sft": [], "preference": []})
    run.close()
    with pytest.raises(ValueError, match="no prompt stage 'missing'"):
        list(prompts_of_run(tmp_path / "none"))
