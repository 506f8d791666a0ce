"""`synth round`: one full Llama-3-style round on the embedded model, then a resume that redoes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from pipelines.round import RoundConfig

ENV = {**os.environ, "SYNTH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
SEEDS = ["What is the capital of Italy?", "Name a yellow fruit.", "What is 3 + 4?", "Say something kind.",
         "Name a planet.", "What color is grass?"]  # fmt: skip
STEPS = [
    "generate_general", "data_preference_all", "train_rm", "collect_prompts", "rejection_sample", "data_sft",
    "train_sft", "data_preference_latest", "train_dpo_0", "train_dpo_1", "average", "card",
]  # fmt: skip


def test_config_errors_are_clear(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("out: x\nrm: {max_steps: 1}\nbogus: 1\n")
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        RoundConfig.from_yaml(p)
    p.write_text("out: x\nrecipes: {poetry: {}}\n")
    with pytest.raises(ValueError, match="unknown recipes"):
        RoundConfig.from_yaml(p)
    p.write_text("out: x\ndpo_variants: [{}, {beta: 0.2}]\naverage_weights: [1.0]\n")
    with pytest.raises(ValueError, match="one weight per DPO variant"):
        RoundConfig.from_yaml(p)
    p.write_text("rounds: 2\n")
    with pytest.raises(ValueError, match="'out'"):
        RoundConfig.from_yaml(p)
    assert RoundConfig.from_yaml(p, out="y", rounds=3).rounds == 3


@pytest.mark.slow
def test_full_round_on_the_embedded_model_and_resume(tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "prompt": p}) + "\n" for i, p in enumerate(SEEDS)))
    train = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 256, "logging_steps": 1}
    cfg = {
        "out": str(tmp_path / "round"),
        "recipes": {"general": {"seeds": str(seeds), "k": 3, "max_tokens": 24, "top_fraction": 0.5}},
        "rm": train,
        "sample": {"k": 2, "max_tokens": 24, "top_fraction": 0.5},
        "sft": train,
        "dpo": {**train, "nll_weight": 0.2},
        "dpo_variants": [{}, {"beta": 0.2}],
    }
    config = tmp_path / "round.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "pipelines.cli", "round", "--config", str(config)]
    first = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]

    here = tmp_path / "round" / "round_1"
    assert sorted(p.stem for p in (here / ".done").iterdir()) == sorted(STEPS)
    for d in ("preference_all", "sft", "preference_latest"):
        assert (here / "data" / d / "README.md").exists()
    assert json.loads((here / "rm" / "metrics.json").read_text())
    assert "## rm" in (here / "ROUND.md").read_text()

    # the round's model is exactly the mean of the two DPO variants (accumulated in fp32, stored in
    # their dtype), the variants differ (so a copy of one could not pass), and it loads
    d0, d1, avg = (load_file(here / d / "model.safetensors") for d in ("dpo_0", "dpo_1", "model"))
    assert avg.keys() == d0.keys() == d1.keys()
    differ = 0
    for key in d0:
        mean = torch.zeros(d0[key].shape).add_(d0[key].float(), alpha=0.5).add_(d1[key].float(), alpha=0.5)
        assert torch.equal(avg[key], mean.to(d0[key].dtype)), key
        differ += not torch.equal(d0[key], d1[key])
    assert differ > len(d0) // 2  # two real variants, not one copied
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(avg[name], d0[name]) and not torch.equal(avg[name], d1[name])
    AutoModelForCausalLM.from_pretrained(here / "model")

    second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("done earlier, skipped") == len(STEPS)


def test_recipes_key_replaces_generators_and_each_recipe_declares_its_prompts(tmp_path, scripted_engine):
    from pipelines.round import _write_prompts
    from synth.recipe import run_recipe
    from synth.recipes.general import GeneralConfig

    p = tmp_path / "r.yaml"
    p.write_text("out: x\ngenerators: {general: {k: 2}}\n")  # configs written before recipes
    assert RoundConfig.from_yaml(p).recipes == {"general": {"k": 2}}

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "prompt": p}) + "\n" for i, p in enumerate(SEEDS)))
    run_recipe(
        "general", GeneralConfig(seeds=str(seeds), out=str(tmp_path / "g"), k=2), scripted_engine
    ).close()
    out = tmp_path / "prompts.jsonl"
    _write_prompts([tmp_path / "g"], out)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"s{i}" for i in range(len(SEEDS))]
    assert rows[0]["messages"] == [{"role": "user", "content": SEEDS[0]}]
