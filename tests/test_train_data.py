"""Loading and validating exported datasets, and the chat-template loss masks."""

from __future__ import annotations

import datasets
import pytest

from synth.chat import encode, encode_prompt_responses, special_ids
from train.data import DatasetError, keep_strengths, load_splits, validate_preference, validate_sft
from train.tiny import embedded_tokenizer, toy_preference_rows, toy_sft_rows, write_export


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


def msg(role, content):
    return {"role": role, "content": content}


CONVO = [
    msg("system", "Be brief."),
    msg("user", "Hi there"),
    msg("assistant", "Hello! How can I help?"),
    msg("user", "2+2?"),
    msg("assistant", "4"),
]


def masked_text(tok, enc):
    return tok.decode([t for t, m in zip(enc.input_ids, enc.mask, strict=True) if m])


# -- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize("readme", [True, False])
def test_load_export_folder(tmp_path, readme):
    write_export(
        tmp_path,
        sft={"train": toy_sft_rows(5), "test": toy_sft_rows(2, 1)},
        preference={"train": toy_preference_rows(6), "test": toy_preference_rows(3, 1)},
        readme=readme,
    )
    train, test = load_splits(tmp_path, "preference")
    assert (len(train), len(test)) == (6, 3)
    assert train[0]["chosen"][0]["role"] == "assistant"
    train, test = load_splits(tmp_path, "sft")
    assert (len(train), len(test)) == (5, 2)


def test_load_single_files(tmp_path):
    datasets.Dataset.from_list(toy_sft_rows(4)).to_json(str(tmp_path / "s.jsonl"))
    datasets.Dataset.from_list(toy_preference_rows(3)).to_parquet(str(tmp_path / "p.parquet"))
    train, test = load_splits(tmp_path / "s.jsonl", "sft")
    assert len(train) == 4 and test is None
    validate_sft(train)
    train, test = load_splits(tmp_path / "p.parquet", "preference")
    assert len(train) == 3 and test is None
    validate_preference(train)


def test_load_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_splits(tmp_path / "nope", "sft")


# -- validation -----------------------------------------------------------------------------


def _pref(**changes):
    row = toy_preference_rows(3)[1]
    row.update(changes)
    return [toy_preference_rows(3)[0], row]


@pytest.mark.parametrize(
    "rows, problem",
    [
        (_pref(chosen=[msg("assistant", "  ")]), "row 1 .*'chosen'.*empty content"),
        (_pref(rejected=[]), "row 1 .*'rejected' is empty"),
        (_pref(chosen=[msg("assistant", "same")], rejected=[msg("assistant", "same ")]), "same"),
        (_pref(edited=[msg("user", "hi")]), "'edited' must hold exactly one assistant"),
        (_pref(strength="meh"), "unknown strength 'meh'"),
        (_pref(prompt=[msg("user", "q"), msg("assistant", "a")]), "ends with an assistant"),
        (_pref(prompt=[msg("robot", "q")]), "unknown role 'robot'"),
    ],
)
def test_bad_preference_rows_are_named(rows, problem):
    with pytest.raises(DatasetError, match=problem) as err:
        validate_preference(datasets.Dataset.from_list(rows))
    assert f"id={rows[1]['id']!r}" in str(err.value)


def test_missing_and_wrong_columns():
    rows = [{k: v for k, v in r.items() if k != "rejected"} for r in toy_preference_rows(2)]
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['rejected'\]"):
        validate_preference(datasets.Dataset.from_list(rows))
    with pytest.raises(DatasetError, match="'messages' must be a list"):
        validate_sft(datasets.Dataset.from_list([{"id": "x", "messages": "hello"}]))
    no_answer = [{"id": "y", "messages": [msg("user", "hi")]}]
    with pytest.raises(DatasetError, match="row 0 \\(id='y'\\).*no assistant turn"):
        validate_sft(datasets.Dataset.from_list(no_answer))


def test_keep_strengths_drops_marginal():
    ds = datasets.Dataset.from_list(toy_preference_rows(8))
    kept = keep_strengths(ds, ("marginally_better",))
    assert len(kept) == 6
    assert "marginally_better" not in kept["strength"]
    assert len(keep_strengths(ds, ())) == 8


# -- masks ----------------------------------------------------------------------------------


def test_sft_mask_keeps_every_assistant_turn_only(tok):
    enc = encode(tok, CONVO, "sft")
    assert enc.input_ids == tok.apply_chat_template(CONVO, tokenize=True, return_dict=True)["input_ids"]
    assert masked_text(tok, enc) == "Hello! How can I help?<|im_end|>4<|im_end|>"
    # system, user and the assistant headers are all out
    first = enc.mask.index(1)
    assert tok.decode(enc.input_ids[:first]).endswith("<|im_start|>assistant\n")


def test_dpo_mask_drops_formatting_tokens(tok):
    enc = encode(tok, CONVO[:3], "dpo")
    assert masked_text(tok, enc) == "Hello! How can I help?"
    specials = special_ids(tok)
    assert not [t for t, m in zip(enc.input_ids, enc.mask, strict=True) if m and t in specials]
    # the same sequence under the SFT mask differs exactly by the end-of-turn token
    sft = encode(tok, CONVO[:3], "sft")
    extra = [t for t, a, b in zip(sft.input_ids, sft.mask, enc.mask, strict=True) if a and not b]
    assert extra == [tok.convert_tokens_to_ids("<|im_end|>")]


def test_prompt_response_split_matches_whole_encoding(tok):
    responses = [msg("assistant", "four"), msg("assistant", "It is 5.")]
    prompt_ids, parts = encode_prompt_responses(tok, CONVO[:4], responses, "sft")
    for resp, part in zip(responses, parts, strict=True):
        whole = encode(tok, [*CONVO[:4], resp], "sft")
        assert prompt_ids + part.input_ids == whole.input_ids
        assert part.mask == whole.mask[len(prompt_ids) :]
        assert masked_text(tok, part) == resp["content"] + "<|im_end|>"


def test_same_named_exports_never_share_a_cache(tmp_path):
    """round_1/data/sft and round_2/data/sft: same folder name, same file names, other rows."""
    from synth.export import export_dataset
    from synth.records import SFTRecord

    def rows(tag):
        return [SFTRecord(id=f"{tag}{i}", messages=[msg("user", f"q{i}"), msg("assistant", f"{tag} {i}")])
                for i in range(4)]  # fmt: skip

    for rnd in ("round_1", "round_2"):
        export_dataset(rows(rnd), [], tmp_path / rnd / "sft", {"name": rnd}, test_fraction=0.0)
    first, _ = load_splits(tmp_path / "round_1" / "sft", "sft")
    second, _ = load_splits(tmp_path / "round_2" / "sft", "sft")
    assert first[0]["messages"][-1]["content"].startswith("round_1")
    assert second[0]["messages"][-1]["content"].startswith("round_2")


def test_multi_shard_export_loads_memory_mapped(tmp_path):
    """Every shard of each split is read, from a memory-mapped cache that follows re-exports."""
    from synth.export import export_dataset
    from synth.records import SFTRecord

    def rows(tag, n):
        return [SFTRecord(id=f"{tag}{i}", messages=[msg("user", f"q{i}"), msg("assistant", f"{tag} {i}")])
                for i in range(n)]  # fmt: skip

    out, cache = tmp_path / "data", tmp_path / "cache"
    export_dataset(rows("a", 25), [], out, {}, test_fraction=0.3, shard_rows=4)
    assert len(list((out / "sft").glob("train-*-of-*.parquet"))) >= 3
    train, test = load_splits(out, "sft", cache_dir=cache)
    assert sorted([*train["id"], *test["id"]]) == sorted(f"a{i}" for i in range(25))
    assert train.cache_files and test.cache_files  # mapped from disk, not held in memory
    validate_sft(train)

    export_dataset(rows("b", 9), [], out, {}, test_fraction=0.3, shard_rows=4)
    train, test = load_splits(out, "sft", cache_dir=cache)
    assert sorted([*train["id"], *test["id"]]) == sorted(f"b{i}" for i in range(9))
