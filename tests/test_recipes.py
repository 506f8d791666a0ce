"""The recipe framework: registry and `synth run` (options, YAML, --set), the worked example recipe,
shipped configs and prompt files, the import layering, and runs written before recipes existed."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import duckdb
import pytest

from pipelines.cli import main
from synth.config import build, load_yaml, parse_sets
from synth.recipe import get_recipe, recipes, run_recipe
from synth.records import Unparsed

ROOT = Path(__file__).resolve().parents[1]


def scripted(msgs, j, sampling):
    """Replies by what is asked: rewrites, judge verdicts (judges' system prompts), answers."""
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    last = msgs[-1]["content"]
    if system.startswith("You rewrite"):
        return (
            "ok"
            if "yellow" in last.lower() and j == 0
            else f"Rewritten prompt: {last[13:]} Explain why, step {j}."
        )
    if "Score: N" in system:
        return "Score: 8\nRationale: fine." if "step 0" in last else "Score: 3\nRationale: weak."
    return f"An answer ({j}) to: {last[:40]}"


def test_run_list_names_every_recipe_with_one_line(capsys):
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in out]
    assert names == sorted(recipes()) and {"general", "code", "rejection-sampling", "evol"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in out)


def test_recipe_help_comes_from_the_config_dataclass(capsys):
    assert main(["run", "evol", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--min-score FLOAT" in text and "Keep rewrites the judge rates at least this" in text
    assert "Range: [1, 10]" in text and "--config" in text and "--set KEY=VALUE" in text


def test_bad_values_and_keys_exit_2_with_the_range(tmp_path, capsys):
    assert main(["run", "general", "--out", str(tmp_path / "r"), "--batch-size", "-1"]) == 2
    assert "batch_size must be in [1, inf), got -1" in capsys.readouterr().err
    assert main(["run", "general", "--out", str(tmp_path / "r"), "--set", "top_fraction=2"]) == 2
    assert "top_fraction must be in (0.0, 1.0], got 2.0" in capsys.readouterr().err
    assert main(["run", "general", "--out", str(tmp_path / "r"), "--set", "nope=1"]) == 2
    assert "unknown keys ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing was started


def test_general_from_its_yaml_with_set_over_a_real_http_server(tmp_path, scripted_engine):
    from openai_server import OpenAIServer

    scripted_engine.reply = scripted
    with OpenAIServer(engine=scripted_engine) as srv:
        code = main(["run", "general", "--config", str(ROOT / "pipelines/configs/general.yaml"),
                     "--set", "k=2", "--set", f"out={tmp_path / 'run'}", "--set", "batch_size=4",
                     "--engine", "openai", "--model", "fake", "--base-url", srv.base_url])  # fmt: skip
    assert code == 0
    from synth.store import Store

    store = Store(tmp_path / "run", read_only=True)
    config = store.get_meta("config")
    assert (config["recipe"], config["k"], config["max_tokens"], config["engine"]) == (
        "general",
        2,
        128,
        "openai",
    )
    assert store.count("generate") == 2 * store.count("seeds") == 48
    store.close()


def test_the_worked_example_recipe(tmp_path, scripted_engine):
    from synth.recipes.evol import EvolConfig

    scripted_engine.reply = scripted
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        '{"id": "a", "prompt": "Name a fruit that is yellow."}\n{"id": "b", "prompt": "What is 3 + 4?"}\n'
    )
    run = run_recipe("evol", EvolConfig(seeds=str(seeds), out=str(tmp_path / "r"), k=2), scripted_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    assert funnel["evolve"]["kept"] == 3 and funnel["evolve"]["reasons"] == {"no_rewrite": 1}
    bad = [r for r in run.store.iter_records("evolve") if isinstance(r, Unparsed)]
    assert len(bad) == 1 and bad[0].raw == "ok" and bad[0].input_id == "a"
    assert bad[0].provenance.template == "evol/deepen" and len(bad[0].provenance.template_version) == 12
    assert funnel["rate"]["kept"] == 1 and funnel["rate"]["reasons"] == {"below_threshold": 2}
    answers = list(run.store.iter_records("answer", kept=True))
    assert [r.id for r in answers] == ["b-e0-0"] and answers[0].response.startswith("An answer")
    assert run.store.get_meta("outputs") == {"sft": ["answer"], "preference": [], "prompts": "rate"}
    run.close()


def test_every_shipped_config_builds_its_recipe():
    for path in sorted((ROOT / "pipelines/configs").glob("*.yaml")):
        if path.stem.startswith(("round", "eval")):  # a round's config, an evaluation suite
            continue
        spec = get_recipe(path.stem)
        sets = parse_sets(["prompts=p.jsonl", "reward_model=rm"]) if path.stem == "rejection-sampling" else {}
        cfg = build(spec.config, load_yaml(path), sets, where=str(path))
        assert cfg.out == f"runs/{path.stem}"
    assert {p.stem for p in (ROOT / "pipelines/configs").glob("*.yaml")} >= set(recipes())


def test_every_prompt_file_loads_and_renders_its_variables():
    from synth.prompts import ROOT as PROMPTS
    from synth.prompts import load_prompt

    files = sorted(PROMPTS.rglob("*.yaml"))
    assert len(files) >= 10
    for f in files:
        p = load_prompt(f.relative_to(PROMPTS).with_suffix("").as_posix())
        assert p.user.strip() and len(p.hash) == 12


def test_imports_run_one_way():
    """pipelines -> synth/train -> sandboxes: nothing in synth/ or sandboxes/ imports train/ or pipelines/."""
    offenders = []
    for package in ("synth", "sandboxes"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                offenders += [f"{path}: {n}" for n in names if n.split(".")[0] in ("train", "pipelines")]
    assert offenders == []


def test_a_run_written_before_recipes_still_exports(tmp_path, capsys):
    """Old stores: no group column, outputs named one stage per kind; rows as they were written."""
    run = tmp_path / "old"
    run.mkdir()
    db = duckdb.connect(str(run / "synth.duckdb"))
    db.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    db.execute(
        "CREATE TABLE stages (stage VARCHAR PRIMARY KEY, position INTEGER, rows_in INTEGER, done BOOLEAN)"
    )
    db.execute("CREATE TABLE batches (stage VARCHAR, batch VARCHAR, PRIMARY KEY (stage, batch))")
    db.execute("CREATE TABLE records (stage VARCHAR, key VARCHAR, seq BIGINT, kind VARCHAR, kept BOOLEAN, "
               "reason VARCHAR, data VARCHAR, PRIMARY KEY (stage, key))")  # fmt: skip
    db.execute(
        "CREATE TABLE quarantine (source VARCHAR, line INTEGER, field VARCHAR, error VARCHAR, raw VARCHAR)"
    )
    db.execute("CREATE TABLE engine_cache (key VARCHAR PRIMARY KEY, model VARCHAR, completions VARCHAR)")
    outputs = {"sft": "top_quartile", "preference": "preference_pairs"}
    db.execute(
        "INSERT INTO meta VALUES ('outputs', ?), ('config', ?)", [json.dumps(outputs), json.dumps({"k": 2})]
    )
    db.execute("INSERT INTO stages VALUES ('top_quartile', 0, 1, true), ('preference_pairs', 1, 1, true)")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    sft = {
        "id": "s0",
        "kind": "sft",
        "messages": messages,
        "verdicts": [{"stage": "top_quartile", "kept": True}],
    }
    db.execute(
        "INSERT INTO records VALUES ('top_quartile', 's0', 0, 'sft', true, NULL, ?)", [json.dumps(sft)]
    )
    db.close()
    assert main(["export", str(run), "--to", str(tmp_path / "ds"), "--test-fraction", "0"]) == 0
    from synth.export import load_export

    assert load_export(tmp_path / "ds", "sft")["train"][0]["messages"][-1]["content"] == "hello"


def test_errors_of_typer_and_click_commands_both_exit_2(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nowhere")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    assert main(["run", "general", "--seeds", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert f"{bad}:2: field 'messages.0.content'" in capsys.readouterr().err


def test_a_failed_check_leaves_no_run_to_refuse_the_corrected_command(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    args = ["run", "rejection-sampling", "--prompts", str(prompts), "--out", str(tmp_path / "r")]
    assert main([*args, "--reward-model", str(tmp_path / "no-rm")]) == 2
    assert "reward model not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_the_worked_example_on_the_embedded_model(tmp_path, hf_engine):
    """evol end to end on the real 135M model: its yield is whatever it is; the mechanics must hold."""
    from synth.recipes.evol import EvolConfig

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        '{"id": "a", "prompt": "Name a fruit that is yellow."}\n{"id": "b", "prompt": "What is 3 + 4?"}\n'
    )
    cfg = EvolConfig(seeds=str(seeds), out=str(tmp_path / "r"), k=2, max_tokens=32, judge_max_tokens=16)
    run = run_recipe("evol", cfg, hf_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    assert [f for f in funnel] == ["seeds", "evolve", "rate", "answer"]
    assert funnel["evolve"]["kept"] + funnel["evolve"]["rejected"] == 4
    assert funnel["rate"]["rows_in"] == funnel["evolve"]["kept"]
    assert funnel["answer"]["rows_in"] == funnel["rate"]["kept"] == funnel["answer"]["kept"]
    for r in run.store.iter_records("evolve"):
        assert r.provenance.model == "SmolLM2-135M-Instruct" and r.provenance.template == "evol/deepen"
        if r.kept:
            assert len(r.prompt[-1].content.split()) >= 3 and r.meta["evolved_from"] in ("a", "b")
        else:
            assert isinstance(r, Unparsed) and r.verdicts[-1].reason in ("no_rewrite", "unchanged")
    for r in run.store.iter_records("rate"):
        assert 1.0 <= r.scores["evolution"] <= 10.0  # the hf engine scores from token probabilities
    run.close()
