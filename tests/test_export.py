"""Export stage: parquet dataset folder + data card, and the Hub upload (no network)."""

from __future__ import annotations

import json
import logging
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import HfApi

from synth.export import (
    MissingTokenError,
    RunSummary,
    assign_splits,
    export_dataset,
    load_export,
    push_to_hub,
    sft_row,
    size_category,
)
from synth.export.writer import ROW_GROUP_ROWS
from synth.records import PreferenceRecord, Provenance, SFTRecord

# The schema the trainers consume, spelled out here independently of synth.export.
MSGS = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
EXPECTED_SCHEMAS = {
    "sft": pa.schema(
        [
            ("id", pa.string()),
            ("messages", MSGS),
            ("capability", pa.string()),
            ("scores", pa.string()),
            ("provenance", pa.string()),
        ]
    ),
    "preference": pa.schema(
        [
            ("id", pa.string()),
            ("prompt", MSGS),
            ("chosen", MSGS),
            ("rejected", MSGS),
            ("edited", MSGS),
            ("strength", pa.string()),
            ("chosen_score", pa.float64()),
            ("rejected_score", pa.float64()),
            ("capability", pa.string()),
            ("scores", pa.string()),
            ("provenance", pa.string()),
        ]
    ),
}
FAKE_TOKEN = "hf_FAKEtokenDoNotLeak1234567890abcdef"


def _prov(cap: str, i: int) -> Provenance:
    return Provenance(
        capability=cap,
        model="SmolLM2-135M-Instruct",
        engine="embedded",
        template=f"{cap}_gen",
        template_version="v2",
        sampling={"temperature": 0.7, "top_p": 0.9},
        seed=i,
        round=1,
        source=f"seeds.jsonl:{i}",
    )


def make_sft(n: int = 12, rejected: tuple[int, ...] = (3, 7)) -> list[SFTRecord]:
    out = []
    for i in range(n):
        r = SFTRecord(
            id=f"sft-{i:03d}",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": f"{i} + {i} = {2 * i}."},
            ],
            scores={"quality": i / 10, "reward": float(i)},
            provenance=_prov("math" if i % 2 else "general_chat", i),
        )
        r.keep("dedup")
        if i in rejected:
            r.reject("quality_filter", "score below threshold")
        out.append(r)
    return out


def make_pref(n: int = 8, rejected: tuple[int, ...] = (5,)) -> list[PreferenceRecord]:
    out = []
    for i in range(n):
        responses = [
            {"content": f"chosen answer {i}", "label": "chosen", "score": 0.8},
            {"content": f"rejected answer {i}", "label": "rejected", "score": None if i == 1 else 0.2},
        ]
        if i % 2 == 0:
            responses.insert(0, {"content": f"edited answer {i}", "label": "edited", "score": 0.95})
        r = PreferenceRecord(
            id=f"pref-{i:03d}",
            prompt=[{"role": "user", "content": f"Question {i}?"}],
            responses=responses,
            strength=None if i == 2 else "better",
            scores={"margin": 0.6},
            provenance=None if i == 3 else _prov("coding", i),
        )
        if i in rejected:
            r.reject("rank", "tie")
        out.append(r)
    return out


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def split_ids(out: Path, config: str) -> dict[str, list[str]]:
    return {
        s: pq.read_table(out / config / f"{s}-00000-of-00001.parquet").column("id").to_pylist()
        for s in ("train", "test")
    }


def shard_ids(out: Path, config: str) -> dict[str, list[str]]:
    """Ids per split over every shard, in shard order."""
    return {
        s: [
            i
            for f in sorted((out / config).glob(f"{s}-*.parquet"))
            for i in pq.read_table(f)["id"].to_pylist()
        ]
        for s in ("train", "test")
    }


def load(out: Path, config: str, tmp_path: Path, **kw):
    return datasets.load_dataset(str(out), config, cache_dir=str(tmp_path / "hf_cache"), **kw)


SUMMARY = {
    "name": "general-r1",
    "funnel": [
        {
            "stage": "generate",
            "rows_in": 40,
            "kept": 30,
            "rejected": 10,
            "reasons": {"empty response": 6, "timeout": 4},
        },
        {
            "stage": "quality_filter",
            "rows_in": 30,
            "kept": 20,
            "rejected": 10,
            "reasons": {"too short": 5, "refusal": 3, "lang|mismatch": 1, "repetition": 1},
        },
    ],
    "models": ["SmolLM2-360M-Instruct"],
    "engines": ["vllm"],
    "templates": {"judge": "v3"},
    "sampling": {"temperature": 0.8, "max_tokens": 96},
    "seed": 1234,
    "round": 1,
    "score_stats": {"quality": {"min": 0.1, "median": 0.5, "mean": 0.52, "max": 0.9}},
    "quarantined": 2,
    "created": "2025-01-02",
}


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, list[SFTRecord], list[PreferenceRecord]]:
    sft, pref = make_sft(), make_pref()
    out = export_dataset(sft, pref, tmp_path / "ds", SUMMARY, test_fraction=0.25, seed=7)
    return out, sft, pref


# --------------------------------------------------------------------------- data


def test_files_and_exact_schema(exported):
    out, _, _ = exported
    for config, schema in EXPECTED_SCHEMAS.items():
        for split in ("train", "test"):
            got = pq.read_schema(out / config / f"{split}-00000-of-00001.parquet")
            assert got.remove_metadata().equals(schema), (config, split, got)
    assert (out / "README.md").is_file()
    assert not list(out.rglob("*.tmp"))


def test_sft_round_trip_excludes_rejected(exported, tmp_path):
    out, sft, _ = exported
    ds = load(out, "sft", tmp_path)
    assert set(ds) == {"train", "test"}
    kept = {r.id: r for r in sft if r.kept}
    assert len(kept) == 10
    rows = [row for split in ds.values() for row in split]
    assert sorted(r["id"] for r in rows) == sorted(kept)
    assert "sft-003" not in {r["id"] for r in rows} and "sft-007" not in {r["id"] for r in rows}
    for row in rows:
        rec = kept[row["id"]]
        assert row["messages"] == [{"role": m.role, "content": m.content} for m in rec.messages]
        assert row["capability"] == rec.provenance.capability
        assert json.loads(row["scores"]) == rec.scores
        assert Provenance.model_validate_json(row["provenance"]) == rec.provenance


def test_preference_round_trip(exported, tmp_path):
    out, _, pref = exported
    ds = load(out, "preference", tmp_path)
    kept = {r.id: r for r in pref if r.kept}
    rows = {row["id"]: row for split in ds.values() for row in split}
    assert sorted(rows) == sorted(kept)
    assert "pref-005" not in rows
    for rid, row in rows.items():
        rec = kept[rid]
        assert row["prompt"] == [{"role": m.role, "content": m.content} for m in rec.prompt]
        assert row["chosen"] == [{"role": "assistant", "content": rec.chosen.content}]
        assert row["rejected"] == [{"role": "assistant", "content": rec.rejected.content}]
        edited = rec.by_label("edited")
        assert row["edited"] == ([{"role": "assistant", "content": edited.content}] if edited else [])
        assert row["strength"] == rec.strength
        assert row["chosen_score"] == rec.chosen.score
        assert row["rejected_score"] == rec.rejected.score
        assert json.loads(row["scores"]) == {"margin": 0.6}
    assert rows["pref-000"]["edited"][0]["content"] == "edited answer 0"
    assert rows["pref-001"]["edited"] == [] and rows["pref-001"]["rejected_score"] is None
    assert rows["pref-002"]["strength"] is None
    assert rows["pref-003"]["provenance"] == "{}" and rows["pref-003"]["capability"] == ""


def test_empty_preference_config_is_written_and_loads(tmp_path):
    out = export_dataset(make_sft(), [], tmp_path / "ds", {}, seed=1)
    for split in ("train", "test"):
        path = out / "preference" / f"{split}-00000-of-00001.parquet"
        table = pq.read_table(path)
        assert table.num_rows == 0
        assert table.schema.remove_metadata().equals(EXPECTED_SCHEMAS["preference"])
    # sft still loads normally next to an empty config
    assert sum(load(out, "sft", tmp_path).num_rows.values()) == 10
    # datasets <= 5.2 cannot materialise 0-row splits; streaming reads the schema-only files
    streamed = load(out, "preference", tmp_path, streaming=True)
    assert set(streamed) == {"train", "test"}
    for split in streamed.values():
        assert list(split.features) == EXPECTED_SCHEMAS["preference"].names
        assert list(split) == []
    try:
        ds = load(out, "preference", tmp_path)
    except ValueError as e:  # upstream limitation (huggingface/datasets#8401)
        assert "corresponds to no data" in str(e)
    else:
        assert sum(ds.num_rows.values()) == 0
    local = load_export(out, "preference")
    assert local.num_rows == {"train": 0, "test": 0}
    assert list(local["train"].features) == EXPECTED_SCHEMAS["preference"].names


def test_single_row_config_loads_with_empty_test_split(tmp_path):
    pref = make_pref(n=1, rejected=())
    out = export_dataset([], pref, tmp_path / "ds", {}, test_fraction=0.5)
    assert pq.read_table(out / "preference" / "test-00000-of-00001.parquet").num_rows in (0, 1)
    ds = load(out, "preference", tmp_path)
    assert sum(ds.num_rows.values()) == 1
    assert load_export(out, "preference").num_rows == {
        s: pq.read_metadata(out / "preference" / f"{s}-00000-of-00001.parquet").num_rows
        for s in ("train", "test")
    }


def test_only_kept_records_and_type_checks(tmp_path):
    sft = make_sft(n=4, rejected=(0, 1, 2, 3))
    out = export_dataset(sft, [], tmp_path / "ds", {})
    assert sum(len(v) for v in split_ids(out, "sft").values()) == 0
    with pytest.raises(TypeError):
        export_dataset(make_pref(n=2), [], tmp_path / "bad", {})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        export_dataset(make_sft(), [], tmp_path / "bad", {}, test_fraction=1.5)


# --------------------------------------------------------------------------- split


def test_split_is_deterministic_and_order_independent(tmp_path):
    sft = make_sft(n=60, rejected=())
    a = split_ids(export_dataset(sft, [], tmp_path / "a", {}, seed=3), "sft")
    b = split_ids(export_dataset(list(reversed(sft)), [], tmp_path / "b", {}, seed=3), "sft")
    assert {k: sorted(v) for k, v in a.items()} == {k: sorted(v) for k, v in b.items()}
    again = split_ids(export_dataset(sft, [], tmp_path / "a", {}, seed=3), "sft")
    assert again == a  # re-export into the same folder: same files, no stale shards
    other = split_ids(export_dataset(sft, [], tmp_path / "c", {}, seed=4), "sft")
    assert sorted(other["test"]) != sorted(a["test"])
    assert a["test"] and a["train"]


def test_assign_splits_fraction_and_guarantees():
    ids = [f"id-{i}" for i in range(2000)]
    out = assign_splits(ids, 0.1, seed=0)
    assert 0.07 < out.count("test") / len(ids) < 0.13
    assert out == assign_splits(ids, 0.1, seed=0)
    # >= 2 rows: at least one in each split, even at extreme fractions
    assert sorted(assign_splits(["x", "y"], 1e-9)) == ["test", "train"]
    assert sorted(assign_splits(["x", "y"], 1 - 1e-9)) == ["test", "train"]
    assert assign_splits(["x"], 0.5) in (["train"], ["test"])
    assert assign_splits([], 0.5) == []
    assert set(assign_splits(ids[:10], 0.0)) == {"train"}
    with pytest.raises(ValueError):
        assign_splits(ids, -0.1)


# --------------------------------------------------------------------------- streaming, shards


def sft_stream(n: int, produced: list[int] | None = None, on_last=None) -> Iterator[SFTRecord]:
    """n kept SFT records, made one at a time; counts them into ``produced[0]``."""
    for i in range(n):
        if produced is not None:
            produced[0] += 1
        if on_last is not None and i == n - 1:
            on_last()
        yield SFTRecord(
            id=f"r{i:06d}",
            messages=[
                {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": f"answer {i}, " * 4},
            ],
            scores={"quality": (i % 100) / 100},
        )


def test_generator_export_streams_into_shards(tmp_path):
    n, shard_rows = 25_000, 10_000
    out = tmp_path / "gen"
    produced = [0]
    tmp_files_before_end: list[Path] = []

    tracemalloc.start()
    try:
        stream = sft_stream(n, produced, lambda: tmp_files_before_end.extend((out / "sft").glob("*.tmp")))
        export_dataset(stream, iter([]), out, {}, test_fraction=0.5, seed=3, shard_rows=shard_rows)
        _, streamed_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        records = list(sft_stream(n))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert produced == [n]
    # Shards were on disk before the input ended, and the export never held the records.
    assert len(tmp_files_before_end) >= 2
    assert streamed_peak < held / 4, (streamed_peak, held)

    names = {s: sorted(f.name for f in (out / "sft").glob(f"{s}-*")) for s in ("train", "test")}
    for split, files in names.items():
        assert len(files) >= 2
        assert files == [f"{split}-{i:05d}-of-{len(files):05d}.parquet" for i in range(len(files))]
        first = pq.ParquetFile(out / "sft" / files[0])
        assert first.metadata.num_rows == shard_rows
        assert (
            max(first.metadata.row_group(g).num_rows for g in range(first.num_row_groups)) <= ROW_GROUP_ROWS
        )
    assert not list(out.rglob("*.tmp"))

    dd = load_export(out, "sft", cache_dir=tmp_path / "cache")
    loaded = {row["id"]: row for split in dd.values() for row in split.to_list()}
    assert loaded == {r.id: sft_row(r) for r in records}

    from_list = export_dataset(
        records, [], tmp_path / "list", {}, test_fraction=0.5, seed=3, shard_rows=shard_rows
    )
    ids = shard_ids(out, "sft")
    assert ids == shard_ids(from_list, "sft")  # same rows, same order
    where = assign_splits([r.id for r in records], 0.5, seed=3)
    assert {s: sorted(v) for s, v in ids.items()} == {
        s: sorted(r.id for r, w in zip(records, where, strict=True) if w == s) for s in ("train", "test")
    }
    meta = front_matter((out / "README.md").read_text())
    assert meta["size_categories"] == ["10K<n<100K"]
    assert f"| `sft` | {len(ids['train'])} | {len(ids['test'])} | {n} |" in (out / "README.md").read_text()


def test_re_export_leaves_no_stale_shards(tmp_path):
    out = tmp_path / "ds"
    export_dataset(sft_stream(25), [], out, {}, test_fraction=0.3, shard_rows=4)
    assert len(list((out / "sft").glob("train-*.parquet"))) >= 3
    (out / "sft" / "train-00009.parquet.tmp").write_bytes(b"left by a killed export")

    export_dataset(sft_stream(7), make_pref(n=3, rejected=()), out, {}, test_fraction=0.3, shard_rows=4)
    ids = shard_ids(out, "sft")
    expected = {f"r{i:06d}" for i in range(7)}
    assert sorted(ids["train"] + ids["test"]) == sorted(expected)
    for config in ("sft", "preference"):
        for split in ("train", "test"):
            files = sorted(f.name for f in (out / config).iterdir() if f.name.startswith(split))
            assert files == [f"{split}-{i:05d}-of-{len(files):05d}.parquet" for i in range(len(files))]
    assert not list(out.rglob("*.tmp"))
    reread = load_export(out, "sft", cache_dir=tmp_path / "cache")
    assert {r["id"] for s in reread.values() for r in s} == expected
    assert {r["id"] for s in load(out, "sft", tmp_path).values() for r in s} == expected  # card globs


def test_failed_export_keeps_the_previous_dataset(tmp_path):
    out = export_dataset(sft_stream(9), [], tmp_path / "ds", {}, shard_rows=4)
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}

    def broken() -> Iterator[SFTRecord]:
        yield from sft_stream(6)
        raise RuntimeError("store went away")

    with pytest.raises(RuntimeError, match="store went away"):
        export_dataset(broken(), [], out, {}, shard_rows=4)
    with pytest.raises(TypeError, match="PreferenceRecord"):
        export_dataset(iter([*sft_stream(5), *make_pref(n=1)]), [], out, {}, shard_rows=4)
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before


def test_stream_split_guarantee_matches_assign_splits(tmp_path):
    """Every id hashes into one split: the export moves the same row as the list function does."""
    for fraction, n_test in ((1e-9, 1), (1 - 1e-9, 4)):
        records = list(sft_stream(5))
        out = export_dataset(iter(records), [], tmp_path / str(fraction), {}, test_fraction=fraction)
        where = assign_splits([r.id for r in records], fraction)
        assert where.count("test") == n_test
        # the moved row is written at the end of its split, so compare as sets
        assert {s: sorted(v) for s, v in shard_ids(out, "sft").items()} == {
            s: sorted(r.id for r, w in zip(records, where, strict=True) if w == s) for s in ("train", "test")
        }


# --------------------------------------------------------------------------- card


def test_card_header(tmp_path):
    out = export_dataset(make_sft(), make_pref(), tmp_path / "ds", SUMMARY, license="mit")
    meta = front_matter((out / "README.md").read_text())
    assert meta["license"] == "mit"
    assert meta["language"] == ["en"]
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert {"synthetic", "sft", "dpo", "math", "general-chat", "coding"} <= set(meta["tags"])
    assert meta["pretty_name"]
    configs = {c["config_name"]: c["data_files"] for c in meta["configs"]}
    assert configs == {
        c: [{"split": s, "path": f"{c}/{s}-*"} for s in ("train", "test")] for c in ("sft", "preference")
    }
    default = export_dataset(make_sft(), [], tmp_path / "d2", {})
    assert front_matter((default / "README.md").read_text())["license"] == "apache-2.0"


def test_size_categories():
    assert size_category(0) == "n<1K"
    assert size_category(999) == "n<1K"
    assert size_category(1000) == "1K<n<10K"
    assert size_category(54_321) == "10K<n<100K"
    assert size_category(2_000_000) == "1M<n<10M"
    assert size_category(10**13) == "n>1T"


def test_card_body(exported):
    out, _, _ = exported
    card = (out / "README.md").read_text()
    body = card.split("\n---\n", 1)[1]
    lines = body.splitlines()
    assert "| stage | rows in | kept | rejected | top rejection reasons |" in lines
    assert "| generate | 40 | 30 | 10 | empty response (6); timeout (4) |" in lines
    assert (
        "| quality_filter | 30 | 20 | 10 | too short (5); refusal (3); lang\\|mismatch (1); "
        "+1 more (1) |" in lines
    )
    # row counts per config/split match the files
    for config in ("sft", "preference"):
        ids = split_ids(out, config)
        n_tr, n_te = len(ids["train"]), len(ids["test"])
        assert f"| `{config}` | {n_tr} | {n_te} | {n_tr + n_te} |" in lines
    # models/engines from the summary and from provenance, templates + versions, seeds, round
    for text in ("SmolLM2-360M-Instruct", "SmolLM2-135M-Instruct", "vllm", "embedded"):
        assert text in body
    assert "| judge | v3 |" in lines and "| math_gen | v2 |" in lines
    assert "1234" in body and "2025-01-02" in body and '"max_tokens": 96' in body
    assert "| quarantined rows | 2 |" in lines
    # score distributions over the exported rows and as reported by the run
    assert "| `sft` | reward | 10 | 0 | 5.5 | 5.6 | 11 |" in lines
    assert "| quality | 0.1 | 0.5 | 0.52 | 0.9 |" in lines
    assert 'load_dataset("REPO_OR_DIR", "sft")' in body


def test_card_with_dataclass_summary_and_repo_id(tmp_path):
    sft = make_sft()
    a = export_dataset(sft, [], tmp_path / "a", SUMMARY)
    b = export_dataset(sft, [], tmp_path / "b", RunSummary(**SUMMARY), repo_id="org/synth-r1")
    card_a, card_b = (a / "README.md").read_text(), (b / "README.md").read_text()
    assert card_a.replace("REPO_OR_DIR", "org/synth-r1") == card_b
    assert 'load_dataset("org/synth-r1", "preference")' in card_b
    extra = RunSummary.from_dict({"name": "x", "judge_model": "big-judge"})
    assert extra.extra == {"judge_model": "big-judge"}


def test_card_renders_with_empty_summary_and_no_records(tmp_path):
    out = export_dataset([], [], tmp_path / "ds", {})
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["size_categories"] == ["n<1K"] and meta["tags"] == ["synthetic"]
    assert "No funnel statistics were recorded" in card
    assert "carry no scores" in card
    assert "No prompt templates were recorded" in card
    assert "{{" not in card and "None" not in card


# --------------------------------------------------------------------------- hub


class RecordingApi(HfApi):
    """HfApi whose network calls are recorded instead of made."""

    def __init__(self) -> None:
        super().__init__(endpoint="https://huggingface.co")
        self.calls: list[tuple[str, tuple, dict]] = []

    def create_repo(self, *args, **kwargs):  # type: ignore[override]
        self.calls.append(("create_repo", args, kwargs))
        return None

    def upload_folder(self, *args, **kwargs):  # type: ignore[override]
        self.calls.append(("upload_folder", args, kwargs))
        return None


def test_push_to_hub_calls_and_never_leaks_token(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    caplog.set_level(logging.DEBUG)
    out = export_dataset(make_sft(), make_pref(), tmp_path / "ds", SUMMARY, repo_id="org/synth-r1")
    api = RecordingApi()
    url = push_to_hub(out, "org/synth-r1", private=True, api=api)

    assert url == "https://huggingface.co/datasets/org/synth-r1"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    _, args, kw = api.calls[0]
    assert (args[0] if args else kw["repo_id"]) == "org/synth-r1"
    assert kw["repo_type"] == "dataset" and kw["exist_ok"] is True and kw["private"] is True
    assert kw["token"] == FAKE_TOKEN  # handed to the API, nowhere else
    _, args, kw = api.calls[1]
    assert not args
    assert Path(kw["folder_path"]) == out
    assert kw["repo_id"] == "org/synth-r1" and kw["repo_type"] == "dataset"
    assert kw["token"] == FAKE_TOKEN

    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert caplog.records, "push should log what it does"
    for text in (caplog.text, captured.out, captured.err):
        assert FAKE_TOKEN not in text


def test_push_token_sources(tmp_path, monkeypatch):
    out = export_dataset(make_sft(n=3), [], tmp_path / "ds", {})
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_fromLegacyVar")
    api = RecordingApi()
    push_to_hub(out, "org/x", api=api)
    assert api.calls[0][2]["token"] == "hf_fromLegacyVar"
    assert api.calls[0][2]["private"] is False
    api = RecordingApi()
    push_to_hub(out, "org/x", token="hf_explicit", api=api)
    assert {c[2]["token"] for c in api.calls} == {"hf_explicit"}


def test_push_without_token_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    out = export_dataset(make_sft(n=3), [], tmp_path / "ds", {})
    api = RecordingApi()
    with pytest.raises(MissingTokenError, match="HF_TOKEN"):
        push_to_hub(out, "org/x", api=api)
    assert api.calls == []
    with pytest.raises(FileNotFoundError):
        push_to_hub(tmp_path / "nowhere", "org/x", token="t", api=api)
    assert api.calls == []


# --------------------------------------------------------------------------- `synth export`


def make_run(path: Path, n: int = 6, stage: str = "final") -> Path:
    """A finished run directory whose declared SFT output (``stage``) holds ``n`` kept rows."""
    from synth.pipeline import Run

    run = Run(path, config={"recipe": "export-test"})
    run.source(stage, make_sft(n, rejected=()))
    run.store.set_meta("outputs", {"sft": [stage], "preference": [], "prompts": None})
    run.close()
    return path


@pytest.fixture
def cli(monkeypatch, capsys):
    """``synth ARGS`` in-process: (exit code, stderr)."""
    from pipelines.cli import main

    monkeypatch.setenv("SYNTH_NO_PROGRESS", "1")

    def invoke(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        return code, capsys.readouterr().err

    return invoke


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_cli_license_goes_into_the_card_header(tmp_path, cli):
    run = make_run(tmp_path / "run")
    assert cli("export", run, "--to", tmp_path / "ds", "--license", "mit")[0] == 0
    card = (tmp_path / "ds" / "README.md").read_text()
    assert front_matter(card)["license"] == "mit"
    assert '"license"' not in card.split("\n---\n", 1)[1]  # not lost in the card's run details
    assert cli("export", run, "--to", tmp_path / "default")[0] == 0
    assert front_matter((tmp_path / "default" / "README.md").read_text())["license"] == "apache-2.0"
    # a summary that names the license (what `synth export` used to hand over) is heard too
    out = export_dataset(make_sft(n=2), [], tmp_path / "lib", {**SUMMARY, "license": "cc-by-4.0"})
    assert front_matter((out / "README.md").read_text())["license"] == "cc-by-4.0"


def test_cli_export_to_a_file_is_a_one_line_error(tmp_path, cli):
    run = make_run(tmp_path / "run")
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    code, err = cli("export", run, "--to", target)
    assert code != 0
    assert "is not a folder" in one_line_error(err)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("value", ["2", "-0.1", "nan"])
def test_cli_test_fraction_is_checked_at_the_boundary(tmp_path, cli, capsys, value):
    # the range is checked before the run is opened: this run does not even exist
    code, err = cli("export", tmp_path / "no-run", "--to", tmp_path / "ds", "--test-fraction", value)
    assert code != 0
    assert "--test-fraction must be in [0, 1]" in one_line_error(err)
    assert not (tmp_path / "ds").exists()
    from pipelines.cli import main

    assert main(["export", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "Range: [0, 1]" in help_text and "--overwrite" in help_text


def test_cli_export_refuses_a_folder_of_other_files_unless_overwrite(tmp_path, cli):
    run = make_run(tmp_path / "run")
    mine = tmp_path / "mine"
    (mine / "sft").mkdir(parents=True)
    (mine / "README.md").write_text("my own notes")
    (mine / "sft" / "train-00000-of-00001.parquet").write_bytes(b"my own data")
    (mine / "keep.txt").write_text("untouched")
    before = files_of(mine)

    code, err = cli("export", run, "--to", mine)
    assert code != 0
    line = one_line_error(err)
    assert "not empty" in line and "--overwrite" in line and "README.md" in line
    assert files_of(mine) == before
    from synth.export import ExportTargetError

    with pytest.raises(ExportTargetError, match="not empty"):
        export_dataset(make_sft(), [], mine, {})
    assert files_of(mine) == before

    assert cli("export", run, "--to", mine, "--overwrite")[0] == 0
    assert (mine / "keep.txt").read_text() == "untouched"  # only what an export writes is replaced
    assert front_matter((mine / "README.md").read_text())["license"] == "apache-2.0"
    assert sum(len(v) for v in shard_ids(mine, "sft").values()) == 6
    assert cli("export", run, "--to", mine)[0] == 0  # now it is this run's export


def test_cli_export_reexports_its_own_run_but_not_another(tmp_path, cli):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", n=3)
    ds = tmp_path / "ds"
    assert cli("export", a, "--to", ds)[0] == 0
    assert cli("export", a, "--to", ds, "--test-fraction", "0.5")[0] == 0  # same run: in place
    code, err = cli("export", b, "--to", ds)
    assert code != 0 and "another run" in one_line_error(err)
    assert sum(len(v) for v in shard_ids(ds, "sft").values()) == 6
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("export", b, "--to", empty)[0] == 0  # an empty folder is fine


class Killed(BaseException):
    pass


def test_cli_rerun_of_a_killed_export_gives_the_same_dataset(tmp_path, cli, monkeypatch):
    from synth.export import writer

    run = make_run(tmp_path / "run", n=12)
    ds = tmp_path / "ds"
    written = [0]
    write = writer._ShardWriter.write

    def dies_midway(self, row):
        written[0] += 1
        if written[0] == 8:
            raise Killed
        write(self, row)

    # a kill -9 runs no clean-up: the .tmp shards and the manifest stay
    monkeypatch.setattr(writer, "ROW_GROUP_ROWS", 2)  # rows reach the .tmp shards before the kill
    monkeypatch.setattr(writer._ShardWriter, "write", dies_midway)
    monkeypatch.setattr(writer._ShardWriter, "discard", lambda self: None)
    with pytest.raises(Killed):
        cli("export", run, "--to", ds, "--test-fraction", "0.3")
    assert list(ds.rglob("*.tmp")) and not (ds / "README.md").exists()
    monkeypatch.undo()

    assert cli("export", run, "--to", ds, "--test-fraction", "0.3")[0] == 0
    assert cli("export", run, "--to", tmp_path / "fresh", "--test-fraction", "0.3")[0] == 0
    assert files_of(ds) == files_of(tmp_path / "fresh")
    assert not list(ds.rglob("*.tmp"))


def test_a_run_from_before_the_top_fraction_rename_still_exports_and_stats(tmp_path, cli, capsys):
    """Runs name their output stages in their metadata: 'top_quartile' of an older run still reads."""
    run = make_run(tmp_path / "old", n=4, stage="top_quartile")
    assert cli("export", run, "--to", tmp_path / "ds")[0] == 0
    assert sum(len(v) for v in shard_ids(tmp_path / "ds", "sft").values()) == 4
    from pipelines.cli import main

    assert main(["stats", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"]["sft"] == 4 and [f["stage"] for f in summary["funnel"]] == ["top_quartile"]
