"""Bad input to `synth train` and `synth average` stops with one line, `error: ...`, a non-zero exit,
and (for training) before any model or tokenizer loads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from pipelines.cli import main
from synth.export import export_dataset
from train.tiny import (
    embedded_tokenizer,
    save_tiny_causal_lm,
    toy_preference_rows,
    toy_sft_rows,
    write_export,
)

SUMMARY = {"name": "empty", "funnel": [], "models": [], "engines": [], "templates": {}, "sampling": {}}


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load weights or a tokenizer fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a model was loaded: {args[:2]}")

    for cls in (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def one_error_line(capsys, code: int, *needles: str) -> str:
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert code != 0, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def empty_export(tmp_path_factory):
    """What `synth export` writes for a run that kept nothing: every config and split, 0 rows."""
    out = tmp_path_factory.mktemp("empty") / "export"
    export_dataset([], [], out, SUMMARY)
    assert (out / "sft" / "train-00000-of-00001.parquet").is_file()
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    return write_export(root, sft={"train": toy_sft_rows(4)}, preference={"train": toy_preference_rows(4)})


def train(kind: str, data, tmp_path, *extra) -> int:
    return main(["train", kind, "--data", str(data), "--out", str(tmp_path / "out"), *map(str, extra)])


@pytest.mark.parametrize("kind, config", [("sft", "sft"), ("rm", "preference"), ("dpo", "preference")])
def test_the_pipelines_own_empty_export(kind, config, empty_export, tmp_path, capsys, no_model_loads):
    code = train(kind, empty_export, tmp_path)
    one_error_line(capsys, code, f"'{config}' data has no training rows", str(empty_export / config))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, text, needles",
    [
        ("garbage.jsonl", "this is not json\n", [":1: not valid JSON"]),
        ("list.jsonl", "[1, 2]\n", [":1: a row must be a JSON object, got a list"]),
        ("blank.jsonl", "\n\n", ["no rows (only blank lines)"]),
        ("zero.jsonl", "", ["empty file (0 bytes)"]),
        ("zero.parquet", "", ["empty file (0 bytes)"]),
        ("junk.parquet", "PAR1 not really", ["unreadable parquet"]),
        ("latin1.jsonl", b'{"messages": "caf\xe9"}\n', ["not UTF-8 text"]),
    ],
)
@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_unreadable_files(kind, name, text, needles, tmp_path, capsys, no_model_loads):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    one_error_line(capsys, train(kind, path, tmp_path), str(path), *needles)


def test_mixed_type_jsonl_names_the_line(tmp_path, capsys, no_model_loads):
    rows = [json.dumps(r) for r in toy_sft_rows(3)]
    rows[2] = json.dumps({"id": "x", "messages": "hello"})
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(rows) + "\n")
    one_error_line(
        capsys,
        train("sft", path, tmp_path),
        f"{path}:3: field 'messages' is a string here but a list on line 1",
    )

    pref = [dict(r) for r in toy_preference_rows(2)]
    pref[1]["chosen"] = {"role": "assistant", "content": "an object, not a list"}
    path = tmp_path / "mixed_pref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pref))
    one_error_line(
        capsys, train("rm", path, tmp_path), f"{path}:2: field 'chosen' is an object here but a list"
    )


def test_bad_rows_are_one_line(tmp_path, capsys, no_model_loads):
    rows = toy_sft_rows(3)
    rows[1]["messages"] = [{"role": "user", "content": "no answer"}]
    rows[2]["messages"] = [{"role": "robot", "content": "beep"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one_error_line(capsys, train("sft", path, tmp_path), "bad sft data (2 row(s))", "row 1", "row 2", "robot")


def test_nothing_left_after_dropping_strengths(tmp_path, capsys, no_model_loads):
    rows = [r for r in toy_preference_rows(8) if r["strength"] in ("slightly_better", "marginally_better")]
    data = write_export(tmp_path / "weak", preference={"train": rows})
    capsys.readouterr()  # write_export's progress bars
    one_error_line(capsys, train("dpo", data, tmp_path), "no preference rows left after dropping strengths")
    rows = [r for r in rows if r["strength"] == "marginally_better"]
    data = write_export(tmp_path / "marginal", preference={"train": rows})
    capsys.readouterr()
    one_error_line(capsys, train("rm", data, tmp_path), "no preference rows left", "--drop-strengths")


@pytest.mark.parametrize("kind", ["sft", "rm", "dpo"])
@pytest.mark.parametrize(
    "model, needle",
    [
        ("{tmp}/no/such/model", "no such model folder"),
        ("./missing-model", "no such model folder"),
        ("{tmp}", "not a model folder (no config.json)"),
        ("nobody-here/no-such-model-xyz", "no such folder, and not in the Hugging Face cache"),
    ],
)
def test_missing_model(kind, model, needle, good, tmp_path, capsys, monkeypatch, no_model_loads):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = model.format(tmp=tmp_path)
    one_error_line(capsys, train(kind, good, tmp_path, "--model", model), f"--model {model}: {needle}")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--batch-size", "0"], "batch_size must be in [1, 65536], got 0"),
        (["--lr", "0"], "lr must be in (0, 1], got 0.0"),
        (["--set", "bogus=1"], "unknown keys ['bogus']"),
        (["--drop-strengths", "meh"], "unknown strength(s) ['meh']"),
    ],
)
def test_bad_options_are_one_line(args, needle, good, tmp_path, capsys, no_model_loads):
    kind = "dpo" if "--drop-strengths" in args else "sft"
    one_error_line(capsys, train(kind, good, tmp_path, *args), needle)


def test_missing_data_option_is_one_line(tmp_path, capsys):
    code = main(["train", "rm", "--out", str(tmp_path)])
    one_error_line(capsys, code, "missing --data")


# -- synth average ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tok = embedded_tokenizer()
    root = tmp_path_factory.mktemp("ckpts")
    return [save_tiny_causal_lm(root / f"m{s}", tok, seed=s) for s in (0, 1)]


def average(*args) -> int:
    return main(["average", *map(str, args)])


def copy_ckpt(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_average_corrupt_safetensors(ckpts, tmp_path, capsys):
    bad = copy_ckpt(ckpts[1], tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 8)
    one_error_line(
        capsys,
        average(ckpts[0], bad, "--out", tmp_path / "avg"),
        f"{bad / 'model.safetensors'}",
        "not a readable safetensors file",
    )
    data = (ckpts[1] / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    one_error_line(
        capsys, average(ckpts[0], bad, "--out", tmp_path / "avg"), "not a readable safetensors file"
    )
    assert not (tmp_path / "avg").exists()


@pytest.fixture
def sharded(ckpts, tmp_path):
    """ckpts[1] stored as two shards with an index."""
    out = copy_ckpt(ckpts[1], tmp_path / "sharded")
    sd = load_file(out / "model.safetensors")
    (out / "model.safetensors").unlink()
    keys = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, part in halves.items():
        save_file({k: sd[k] for k in part}, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return out


def test_average_sharded_copy_is_fine(ckpts, sharded, tmp_path, capsys):
    assert average(ckpts[0], sharded, "--out", tmp_path / "avg") == 0


def test_average_index_naming_a_missing_shard(ckpts, sharded, tmp_path, capsys):
    (sharded / "model-00002-of-00002.safetensors").unlink()
    code = average(ckpts[0], sharded, "--out", tmp_path / "avg")
    one_error_line(capsys, code, "names shard 'model-00002-of-00002.safetensors', which is not in")
    assert not (tmp_path / "avg").exists()


def test_average_index_naming_a_tensor_its_shard_lacks(ckpts, sharded, tmp_path, capsys):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = next(v for v in index["weight_map"].values() if v != index["weight_map"][key])
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    one_error_line(capsys, average(ckpts[0], sharded, "--out", tmp_path / "avg"), "lacks", key)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"weight_map": {"a": 3}}'])
def test_average_bad_index_json(ckpts, sharded, tmp_path, capsys, text):
    (sharded / "model.safetensors.index.json").write_text(text)
    code = average(ckpts[0], sharded, "--out", tmp_path / "avg")
    one_error_line(capsys, code, str(sharded / "model.safetensors.index.json"))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_average_refuses_nan_unless_allowed(ckpts, tmp_path, capsys, value):
    bad = copy_ckpt(ckpts[1], tmp_path / "nan")
    sd = load_file(bad / "model.safetensors")
    key = "model.layers.1.mlp.up_proj.weight"
    sd[key][0, :3] = value
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    code = average(ckpts[0], bad, "--out", tmp_path / "avg")
    one_error_line(capsys, code, f"{bad}: '{key}' has 3 NaN/inf value(s)", "--allow-nan")
    assert not (tmp_path / "avg").exists()

    assert average(ckpts[0], bad, "--out", tmp_path / "avg", "--allow-nan") == 0
    avg = load_file(tmp_path / "avg" / "model.safetensors")
    assert not torch.isfinite(avg[key][0, :3]).any() and torch.isfinite(avg[key][1:]).all()
