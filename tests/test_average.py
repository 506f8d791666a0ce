"""Checkpoint averaging: exact (weighted) means, dtypes, shards, tied weights, clear mismatch errors."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from train.average import AverageError, average_checkpoints
from train.tiny import embedded_tokenizer, tiny_causal_lm, tiny_config, tiny_reward_model
from train.tools_cli import average


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


def save(model, path, tok, **kw):
    model.save_pretrained(path, **kw)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def two(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return [save(tiny_causal_lm(tok, seed=s), root / f"m{s}", tok) for s in (0, 1)]


def weights_of(path):
    return load_file(path / "model.safetensors")


def test_uniform_mean_is_exact_and_loads(two, tmp_path):
    out = average_checkpoints(two, tmp_path / "avg")
    a, b, avg = weights_of(two[0]), weights_of(two[1]), weights_of(out)
    assert set(avg) == set(a) and "lm_head.weight" not in avg  # tied: stored once, as saved
    for key in a:
        assert avg[key].dtype == torch.float32
        assert torch.equal(avg[key], (a[key] + b[key]) / 2), key
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.model.embed_tokens.weight, avg["model.embed_tokens.weight"])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "average.json").read_text())
    assert record["weights"] == [0.5, 0.5]


def test_weighted_mean_normalises_weights(two, tmp_path):
    out = average_checkpoints(two, tmp_path / "avg", weights=[1, 3])
    a, b, avg = weights_of(two[0]), weights_of(two[1]), weights_of(out)
    for key in a:
        expected = (0.25 * a[key].double() + 0.75 * b[key].double()).float()
        torch.testing.assert_close(avg[key], expected, rtol=1e-6, atol=1e-7)
    emb = "model.embed_tokens.weight"
    assert not torch.equal(avg[emb], (a[emb] + b[emb]) / 2)


def test_bf16_accumulates_in_fp32_and_stays_bf16(tok, tmp_path):
    paths = [save(tiny_causal_lm(tok, seed=s).to(torch.bfloat16), tmp_path / f"b{s}", tok) for s in (0, 1, 2)]
    out = average_checkpoints(paths, tmp_path / "avg", weights=[0.5, 0.3, 0.2])
    ws = [weights_of(p) for p in paths]
    avg = weights_of(out)
    for key in avg:
        assert avg[key].dtype == torch.bfloat16
        acc = torch.zeros(avg[key].shape)
        for w, sd in zip([0.5, 0.3, 0.2], ws, strict=True):
            acc.add_(sd[key].float(), alpha=w)
        assert torch.equal(avg[key], acc.to(torch.bfloat16)), key
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_sharded_checkpoints(tok, two, tmp_path):
    sharded = [
        save(tiny_causal_lm(tok, seed=s), tmp_path / f"s{s}", tok, max_shard_size="1MB") for s in (0, 1)
    ]
    index = json.loads((sharded[0] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    out = average_checkpoints(sharded, tmp_path / "avg")
    out_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert out_index["weight_map"] == index["weight_map"]  # the first checkpoint's layout
    merged = {}
    for shard in sorted(set(out_index["weight_map"].values())):
        merged.update(load_file(out / shard))
    reference = weights_of(average_checkpoints(two, tmp_path / "ref"))  # same seeds, one file
    assert merged.keys() == reference.keys()
    for key in merged:
        assert torch.equal(merged[key], reference[key]), key
    assert out_index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in merged.values())
    AutoModelForCausalLM.from_pretrained(out)


def test_a_stored_tied_duplicate_is_dropped(two, tmp_path):
    # a checkpoint written by another tool that stores the tied lm_head next to the embedding
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    sd = weights_of(two[1])
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, str(explicit / "model.safetensors"), metadata={"format": "pt"})
    (explicit / "config.json").write_text((two[1] / "config.json").read_text())
    out = average_checkpoints([two[0], explicit], tmp_path / "avg")
    assert weights_of(out).keys() == weights_of(two[0]).keys()

    sd["lm_head.weight"] = torch.randn_like(sd["lm_head.weight"])  # untied: not a duplicate
    save_file(sd, str(explicit / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AverageError, match=r"different parameters: .*lm_head\.weight"):
        average_checkpoints([two[0], explicit], tmp_path / "avg2")


def test_mismatches_raise_clear_errors(tok, two, tmp_path):
    from transformers import LlamaForCausalLM

    wider = save(LlamaForCausalLM(tiny_config(tok, intermediate_size=96)), tmp_path / "wide", tok)
    with pytest.raises(AverageError, match=r"shape mismatch for 'model\.layers\.0\.mlp\.\w+_proj\.weight'"):
        average_checkpoints([two[0], wider], tmp_path / "x")

    rm = save(tiny_reward_model(tok), tmp_path / "rm", tok)
    with pytest.raises(AverageError, match="different architectures"):
        average_checkpoints([two[0], rm], tmp_path / "x")

    with pytest.raises(AverageError, match="3 weights for 2 checkpoints"):
        average_checkpoints(two, tmp_path / "x", weights=[1, 1, 1])
    with pytest.raises(AverageError, match="non-negative"):
        average_checkpoints(two, tmp_path / "x", weights=[1, -1])
    with pytest.raises(AverageError, match="at least two"):
        average_checkpoints(two[:1], tmp_path / "x")
    with pytest.raises(AverageError, match="no model.safetensors"):
        average_checkpoints([two[0], tmp_path], tmp_path / "x")
    with pytest.raises(AverageError, match="one of the input checkpoints"):
        average_checkpoints(two, two[0])
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_cli(two, tmp_path):
    app = typer.Typer()
    app.command()(average)
    app.command("noop")(lambda: None)  # two commands: typer keeps the sub-command name
    runner = CliRunner()
    result = runner.invoke(app, ["average", str(two[0]), str(two[1]), "--out", str(tmp_path / "a"),
                                 "--weights", "0.25,0.75"])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "a" / "average.json").read_text())
    assert record["weights"] == [0.25, 0.75]

    result = runner.invoke(app, ["average", str(two[0]), str(two[1]), "--out", str(tmp_path / "b"),
                                 "--weights", "0.5,x"])  # fmt: skip
    assert result.exit_code == 2 and "comma-separated numbers" in result.output
    result = runner.invoke(app, ["average", str(two[0]), str(two[1]), "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "not empty" in result.output
