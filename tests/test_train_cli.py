"""`train rm|sft|dpo`: options (help, ranges, YAML), end to end on a tiny model (fast), the embedded
model (slow smoke), bad data."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import train
from synth.config import ConfigError, build, load_yaml, parse_sets
from train.cli import app, group
from train.options import OPTIONS, DPOOptions, RMOptions, SFTOptions
from train.tiny import save_tiny_causal_lm, toy_preference_rows, toy_sft_rows, write_export

runner = CliRunner()


# -- options: help, ranges, YAML (no training) ----------------------------------------------------
FLAGS = {
    "data": "--data", "out": "--out", "model": "--model", "epochs": "--epochs", "lr": "--lr",
    "batch_size": "--batch-size", "grad_accum": "--grad-accum", "max_length": "--max-length",
    "max_steps": "--max-steps",
    "gradient_checkpointing": "--gradient-checkpointing / --no-gradient-checkpointing",
    "deepspeed": "--deepspeed", "logging_steps": "--logging-steps", "seed": "--seed",
    "margin": "--margin", "concat": "--concat / --no-concat",
    "drop_strengths": "--drop-strengths", "beta": "--beta", "nll_weight": "--nll-weight",
}  # fmt: skip


def test_app_is_the_click_group():
    assert app is group and set(group.commands) == {"rm", "sft", "dpo"}


@pytest.mark.parametrize("kind", ["rm", "sft", "dpo"])
def test_help_lists_every_option_with_help_and_default(kind):
    result = runner.invoke(group, [kind, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # help wraps at word boundaries
    fields = dataclasses.fields(OPTIONS[kind])
    extra = {
        "rm": {"margin", "concat", "drop_strengths"},
        "sft": set(),
        "dpo": {"beta", "nll_weight", "drop_strengths"},
    }
    assert {f.name for f in fields} == set(list(FLAGS)[:13]) | extra[kind]
    for f in fields:
        assert FLAGS[f.name] in text, f.name
        assert f.metadata["help"] in text, f.name
        if f.default is dataclasses.MISSING:
            assert f"{f.metadata['help']} [required" in text
        elif isinstance(f.default, tuple):
            assert f"[default: {','.join(f.default)}]" in text, f.name
        elif f.default is not None:
            assert f"[default: {f.default}]" in text, f.name
    for flag in ("--config FILE", "--set KEY=VALUE"):
        assert flag in text
    assert "Range: (0, 1]. [default: 1e-05]" in text  # --lr
    if kind == "dpo":  # Llama 3: DPO on "significantly better" and "better" pairs only
        assert "[default: slightly_better,marginally_better]" in text
    if kind == "rm":  # Llama 3: no margin term; Llama 2's two settings named as the paper names them
        assert "One of: none, small, large. [default: none]" in text
        assert "small (Llama 2: 1, 0.66, 0.33, 0)" in text and "large (Llama 2: 3, 2, 1, 0)" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "-1"], "lr must be in (0, 1], got -1.0"),
        (["--batch-size", "0"], "batch_size must be in [1, 65536], got 0"),
        (["--max-steps", "-2"], "max_steps must be in [-1, inf), got -2"),
        (["--set", "seed=-5"], "seed must be in [0, 4294967295], got -5"),
    ],
)
def test_bad_option_value_exits_2_with_range(tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(train, "run_recipe", lambda *a, **k: pytest.fail("trained despite a bad value"))
    result = runner.invoke(group, ["sft", "--data", "d", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_bad_dpo_beta_and_missing_data_exit_2(tmp_path):
    result = runner.invoke(group, ["dpo", "--data", "d", "--out", "o", "--beta", "0"])
    assert result.exit_code == 2 and "beta must be in (0, 100], got 0.0" in result.output
    result = runner.invoke(group, ["rm", "--out", "o"])
    assert result.exit_code == 2 and "missing --data" in result.output
    result = runner.invoke(group, ["sft", "--data", "d", "--out", "o", "--set", "lerning_rate=1"])
    assert result.exit_code == 2 and "unknown keys ['lerning_rate']" in result.output


def test_build_from_yaml_and_set(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("data: export/\nout: runs/sft\nmax_steps: 1\nlr: 2.0e-5\n")
    opts = build(SFTOptions, load_yaml(path), {"batch_size": 2}, parse_sets(["seed=3"]))
    assert opts == SFTOptions(data="export/", out="runs/sft", max_steps=1, lr=2e-5, batch_size=2, seed=3)
    kind, data, model, config = opts.recipe_call()
    assert (kind, data, model) == ("sft", "export/", "embedded")
    assert config == {
        "output_dir": "runs/sft", "num_train_epochs": 1.0, "learning_rate": 2e-5,
        "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 1,
        "max_length": 1024, "max_steps": 1, "activation_checkpointing": False, "deepspeed": None,
        "logging_steps": 10, "seed": 3,
    }  # fmt: skip
    # later layers win; --set beats the YAML
    assert build(SFTOptions, load_yaml(path), parse_sets(["max_steps=5"])).max_steps == 5
    with pytest.raises(ConfigError, match=r"lr must be in \(0, 1\]"):
        build(SFTOptions, load_yaml(path), {"lr": -1})


def test_recipe_extras_match_the_recipe_configs():
    rm = RMOptions(data="d", out="o", margin="small", concat=True)
    _, _, _, config = rm.recipe_call()
    assert config["margin"] == "small" and config["concat_responses"] is True
    assert config["drop_strengths"] == ("marginally_better",)
    assert RMOptions(data="d", out="o", drop_strengths=()).recipe_config()["drop_strengths"] == ()
    dpo = DPOOptions(data="d", out="o", beta=0.3, nll_weight=0.0, drop_strengths=(), deepspeed="z.json")
    config = dpo.recipe_config()
    assert (config["beta"], config["nll_weight"], config["drop_strengths"]) == (0.3, 0.0, ())
    assert config["deepspeed"] == "z.json"
    # every key is a field of the recipe's config class
    from train import config as configs

    for opts, cls in [(rm, configs.RMConfig), (SFTOptions(data="d", out="o"), configs.SFTConfig),
                      (dpo, configs.DPOConfig)]:  # fmt: skip
        assert set(opts.recipe_config()) <= {f.name for f in dataclasses.fields(cls)}


def test_llama3_defaults_no_rm_margin_and_dpo_on_clear_preferences():
    from train.config import DPOConfig, RMConfig

    rm = RMOptions(data="d", out="o").recipe_config()
    assert rm["margin"] == "none" and rm["drop_strengths"] == ("marginally_better",)
    dpo = DPOOptions(data="d", out="o").recipe_config()
    assert dpo["drop_strengths"] == ("slightly_better", "marginally_better")
    assert DPOConfig(output_dir="o").drop_strengths == ("slightly_better", "marginally_better")
    assert RMConfig(output_dir="o").margin_table() is None
    assert RMConfig(output_dir="o", margin="small").margin_table() == pytest.approx(
        {"significantly_better": 1.0, "better": 2 / 3, "slightly_better": 1 / 3, "marginally_better": 0.0}
    )
    assert RMConfig(output_dir="o", margin="large").margin_table() == {
        "significantly_better": 3.0, "better": 2.0, "slightly_better": 1.0, "marginally_better": 0.0,
    }  # fmt: skip
    # the choice stays an option: from the command line, YAML or --set
    opts = build(DPOOptions, {"data": "d", "out": "o"}, parse_sets(["drop_strengths=marginally_better"]))
    assert opts.recipe_config()["drop_strengths"] == ("marginally_better",)
    assert build(RMOptions, {"data": "d", "out": "o", "margin": "large"}).recipe_config()["margin"] == "large"
    with pytest.raises(ConfigError, match="margin must be one of none, small, large"):
        build(RMOptions, {"data": "d", "out": "o", "margin": "huge"})
    with pytest.raises(ConfigError, match=r"unknown strength\(s\) \['meh'\]"):
        build(DPOOptions, {"data": "d", "out": "o", "drop_strengths": "better,meh"})


def test_cli_config_file_and_set_reach_run_recipe(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "run_recipe", lambda *a, **k: calls.append((a, k)) or {})
    path = tmp_path / "dpo.yaml"
    path.write_text(f"data: {tmp_path}/export\nout: {tmp_path}/dpo\nmax_steps: 1\nbeta: 0.5\nseed: 7\n")
    result = runner.invoke(group, ["dpo", "--config", str(path), "--beta", "0.25", "--drop-strengths", "",
                                   "--set", "seed=3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"saved to {tmp_path}/dpo" in result.output
    [(args, kwargs)] = calls
    assert args == ("dpo", f"{tmp_path}/export", "embedded")
    assert kwargs["max_steps"] == 1 and kwargs["seed"] == 3 and kwargs["beta"] == 0.25
    assert kwargs["drop_strengths"] == () and kwargs["output_dir"] == f"{tmp_path}/dpo"


def test_python_m_train_cli_runs():
    result = subprocess.run([sys.executable, "-m", "train.cli", "sft", "--help"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--max-steps" in result.stdout and "--config" in result.stdout


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return write_export(
        root,
        sft={"train": toy_sft_rows(6), "test": toy_sft_rows(2, seed=1)},
        preference={"train": toy_preference_rows(6), "test": toy_preference_rows(4, seed=1)},
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny"))


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def check_outputs(out, kind):
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert list(out.glob("runs/*/events.out.tfevents.*")), "no TensorBoard event file"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["train_loss"] > 0
    loader = AutoModelForSequenceClassification if kind == "rm" else AutoModelForCausalLM
    model = loader.from_pretrained(out)
    if kind == "rm":
        assert model.config.num_labels == 1 and model.config.pad_token_id is not None
        ev = metrics["eval"]
        assert ev["overall"]["pairs"] == 4 + 2 * 2  # 4 rows, 2 with an edited response
        assert {"significantly_better", "better", "slightly_better", "marginally_better"} <= set(ev)
    return model


@pytest.mark.parametrize("kind", ["rm", "sft", "dpo"])
def test_cli_tiny_model(data, tiny, tmp_path, kind):
    extra = {"rm": ["--concat", "--margin", "large"], "sft": [], "dpo": ["--beta", 0.2]}[kind]
    out = tmp_path / kind
    invoke(kind, "--data", data, "--out", out, "--model", tiny, "--max-steps", 2,
           "--batch-size", 2, "--logging-steps", 1, *extra)  # fmt: skip
    check_outputs(out, kind)


def test_cli_single_jsonl_file(tiny, tmp_path):
    import datasets

    path = tmp_path / "sft.jsonl"
    datasets.Dataset.from_list(toy_sft_rows(4)).to_json(str(path))
    invoke("sft", "--data", path, "--out", tmp_path / "o", "--model", tiny, "--max-steps", 1)
    assert (tmp_path / "o" / "model.safetensors").exists()


def test_cli_bad_data_fails_before_training(tmp_path, tiny):
    rows = toy_preference_rows(4)
    rows[2]["rejected"] = rows[2]["chosen"]
    root = write_export(tmp_path / "bad", preference={"train": rows})
    result = runner.invoke(app, ["dpo", "--data", str(root), "--out", str(tmp_path / "o"),
                                 "--model", str(tiny)])  # fmt: skip
    assert result.exit_code == 2
    assert "row 2 (id='p0-2')" in result.output and "same response" in result.output
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return write_export(
        tmp_path_factory.mktemp("small"),
        sft={"train": toy_sft_rows(2)},
        preference={"train": toy_preference_rows(2), "test": toy_preference_rows(4, seed=1)},
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rm", "sft", "dpo"])
def test_cli_embedded_model_smoke(small_data, tmp_path, kind):
    out = tmp_path / kind
    invoke(kind, "--data", small_data, "--out", out, "--max-steps", 1, "--batch-size", 2,
           "--max-length", 128, "--logging-steps", 1)  # fmt: skip
    model = check_outputs(out, kind)
    assert model.config.hidden_size == 576  # SmolLM2-135M, not a tiny stand-in
    if kind != "rm":
        ids = torch.tensor([[1, 4093, 198]])
        assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_ship(stage):
    from pathlib import Path

    import train

    path = Path(train.__file__).parent / "configs" / f"zero{stage}.json"
    config = json.loads(path.read_text())
    assert config["zero_optimization"]["stage"] == stage
    # "auto" lets TrainingArguments fill batch sizes, accumulation and bf16
    assert config["train_micro_batch_size_per_gpu"] == "auto" and config["bf16"]["enabled"] == "auto"
