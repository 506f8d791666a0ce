"""`train rm|sft|dpo` end to end: tiny model (fast), the embedded model (slow smoke), bad data."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from typer.testing import CliRunner

from train.cli import app
from train.tiny import save_tiny_causal_lm, toy_preference_rows, toy_sft_rows, write_export

runner = CliRunner()


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
    extra = {"rm": ["--concat", "--no-margin"], "sft": [], "dpo": ["--beta", 0.2]}[kind]
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
