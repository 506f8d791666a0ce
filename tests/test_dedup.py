"""Semantic and near-exact deduplication (synth.stages.dedup) with the real all-MiniLM-L6-v2 embedder,
faiss and datasketch, and both stage kinds in a real Run over a DuckDB store."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synth.pipeline import Run
from synth.records import PreferenceRecord, SFTRecord
from synth.stages.dedup import (
    DEFAULT_THRESHOLD,
    Embedder,
    IndexBusy,
    MinHashIndex,
    NearDuplicates,
    SemanticDedup,
    conversation_text,
    semantic_dedup,
)

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [json.loads(line) for line in (ROOT / "pipelines/data/general_seeds.jsonl").read_text().splitlines()]


class MemoEmbedder(Embedder):
    """The real embedder, each distinct text encoded once per test session; counts the texts it was
    asked for."""

    def __init__(self) -> None:
        super().__init__(batch_size=32)
        self.memo: dict[str, np.ndarray] = {}
        self.asked = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.asked += len(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if todo:
            self.memo.update(zip(todo, super().encode(todo), strict=True))
        return np.stack([self.memo[t] for t in texts]) if texts else super().encode([])


@pytest.fixture(scope="module")
def embedder() -> MemoEmbedder:
    return MemoEmbedder()


def prompt_row(rid: str, text: str, quality: float = 1.0, difficulty: float = 1.0) -> SFTRecord:
    return SFTRecord(
        id=rid,
        messages=[{"role": "user", "content": text}],
        scores={"quality": quality, "difficulty": difficulty},
    )


# -- the embedder and the text ------------------------------------------------------------------
def test_embedder_gives_unit_float32_rows_and_conversation_text(embedder):
    vecs = Embedder.encode(
        embedder, ["Why is the sky blue?", "What makes the sky look blue?", "Write a haiku."]
    )
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > DEFAULT_THRESHOLD > vecs[0] @ vecs[2]
    assert Embedder.encode(embedder, []).shape == (0, 384)
    sft = SFTRecord(
        id="a", messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    )
    assert conversation_text(sft) == "user: Hi\nassistant: Hello"
    pref = PreferenceRecord(
        id="p",
        prompt=[{"role": "user", "content": "Hi"}],
        responses=[{"content": "Best", "label": "chosen"}, {"content": "Worst", "label": "rejected"}],
    )
    assert conversation_text(pref) == "user: Hi\nassistant: Best"


# -- the greedy semantic pass -------------------------------------------------------------------
PLANTED = {
    # copy id: (its text, the seed it copies, whether the copy outranks the seed)
    "c-js": ("What is the way to reverse a string using JavaScript?", "g006", False),
    "c-japan": ("Which city is Japan's capital?", "g002", True),
    "c-boil": ("At sea level, what temperature in Celsius does water boil at?", "g022", False),
    "c-http": ("What does HTTP stand for, and what is it used for?", "g015", False),
}
REWORDED = ("c-email", "What are three pieces of advice for writing emails that are easy to understand?")


def seed_rows() -> list[SFTRecord]:
    rows = [prompt_row(s["id"], s["prompt"], quality=0.5 + (i % 5) / 10) for i, s in enumerate(SEEDS)]
    rank = {r.id: r.scores["quality"] for r in rows}
    for cid, (text, seed, outranks) in PLANTED.items():
        rows.append(prompt_row(cid, text, quality=rank[seed] + (0.05 if outranks else -0.05)))
    rows.append(prompt_row(REWORDED[0], REWORDED[1], quality=0.1))
    return rows


def dedup_rows(rows, embedder, **kw):
    emb = embedder.encode([conversation_text(r) for r in rows])
    ranks = [r.scores["quality"] * r.scores["difficulty"] for r in rows]
    return semantic_dedup([r.id for r in rows], emb, ranks, **kw), emb, ranks


def test_unrelated_seeds_are_all_kept(embedder):
    rows = [prompt_row(s["id"], s["prompt"]) for s in SEEDS]
    result, _, _ = dedup_rows(rows, embedder)
    assert result.dropped == {}
    assert result.kept == sorted(r.id for r in rows)  # equal ranks: id order


def test_planted_copies_are_dropped_and_the_higher_ranked_copy_kept(embedder):
    rows = seed_rows()
    result, _, _ = dedup_rows(rows, embedder)
    expected = {}
    for cid, (_, seed, outranks) in PLANTED.items():
        loser, winner = (seed, cid) if outranks else (cid, seed)
        expected[loser] = winner
    assert {k: v[0] for k, v in result.dropped.items()} == expected
    assert all(DEFAULT_THRESHOLD <= sim <= 1.0 + 1e-5 for _, sim in result.dropped.values())
    # a heavier rewording (cosine ~0.71, measured) is not a duplicate at the default threshold
    assert REWORDED[0] in result.kept
    assert len(result.kept) + len(result.dropped) == len(rows)
    # kept in rank order
    ranks = {r.id: r.scores["quality"] for r in rows}
    assert [ranks[i] for i in result.kept] == sorted((ranks[i] for i in result.kept), reverse=True)
    # a lower threshold also catches the rewording, as a duplicate of the seed it rewords (g003)
    lower, _, _ = dedup_rows(rows, embedder, threshold=0.7)
    assert lower.dropped[REWORDED[0]][0] == "g003"


def test_deterministic_and_clustered_like_flat_on_clear_duplicates(embedder):
    rows = seed_rows()
    _, emb, ranks = dedup_rows(rows, embedder)
    ids = [r.id for r in rows]
    first = semantic_dedup(ids, emb, ranks, clusters=4, seed=3)
    assert semantic_dedup(ids, emb, ranks, clusters=4, seed=3) == first
    flat = semantic_dedup(ids, emb, ranks, clusters=1)
    assert set(first.kept) == set(flat.kept)  # nprobe 3 of 4 clusters finds every planted pair
    # one cluster: the input order does not matter (rank, then id, decides)
    perm = np.random.default_rng(0).permutation(len(ids))
    shuffled = semantic_dedup([ids[i] for i in perm], emb[perm], [ranks[i] for i in perm], clusters=1)
    assert shuffled == flat


def test_threshold_edge_and_ties():
    # cosine exactly 0.75 (representable): a row at the threshold is a duplicate, just below it is not
    a = np.zeros(8, dtype=np.float32)
    a[0] = 1.0
    b = np.zeros(8, dtype=np.float32)
    b[0], b[1] = 0.75, math.sqrt(1 - 0.75**2)
    emb = np.stack([a, b])
    at = semantic_dedup(["a", "b"], emb, [2.0, 1.0], threshold=0.75)
    assert at.kept == ["a"] and at.dropped == {"b": ("a", pytest.approx(0.75))}
    above = semantic_dedup(["a", "b"], emb, [2.0, 1.0], threshold=float(np.nextafter(np.float32(0.75), 1)))
    assert above.kept == ["a", "b"] and above.dropped == {}
    # equal rank: the smaller id is kept whatever the input order
    same = np.stack([a, a, a])
    tie = semantic_dedup(["z", "m", "b"], same, [1.0, 1.0, 1.0])
    assert tie.kept == ["b"] and tie.dropped == {
        "m": ("b", pytest.approx(1.0)),
        "z": ("b", pytest.approx(1.0)),
    }
    # the higher rank wins over the smaller id
    assert semantic_dedup(["z", "b"], same[:2], [2.0, 1.0]).kept == ["z"]


def test_pair_split_across_clusters_is_found_by_probing_neighbours():
    """Two rows on either side of a cluster boundary: Llama 3's per-cluster rule (nprobe 1) misses
    the pair; probing the two nearest clusters finds it."""
    rng = np.random.default_rng(0)
    d = 64
    e1, e2 = np.eye(d, dtype=np.float32)[0], np.eye(d, dtype=np.float32)[1]

    def around(axis):
        noise = rng.standard_normal(d).astype(np.float32)
        noise[:2] = 0
        v = 0.6 * axis + 0.8 * noise / np.linalg.norm(noise)
        return v / np.linalg.norm(v)

    members = [around(e1) for _ in range(60)] + [around(e2) for _ in range(60)]
    p = e1 + 0.95 * e2
    q = 0.95 * e1 + e2
    emb = np.stack([p / np.linalg.norm(p), q / np.linalg.norm(q), *members]).astype(np.float32)
    ids = ["p", "q"] + [f"m{i:03d}" for i in range(len(members))]
    ranks = [10.0, 9.0] + [1.0] * len(members)
    per_cluster = semantic_dedup(ids, emb, ranks, clusters=2, nprobe=1)
    probed = semantic_dedup(ids, emb, ranks, clusters=2, nprobe=2)
    assert "q" in per_cluster.kept and per_cluster.dropped == {}
    assert probed.dropped == {"q": ("p", pytest.approx(float(emb[0] @ emb[1]), abs=1e-5))}


def test_bad_input_is_refused():
    emb = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="3 ids need 3 embeddings"):
        semantic_dedup(["a", "b", "c"], emb[:2], [1, 1, 1])
    with pytest.raises(ValueError, match="unique"):
        semantic_dedup(["a", "a", "c"], emb, [1, 1, 1])
    assert semantic_dedup([], np.zeros((0, 3), dtype=np.float32), []).kept == []


# -- MinHash --------------------------------------------------------------------------------------
LONG = (
    "The water cycle describes how water moves between the oceans, the air and the land. Heat from "
    "the sun evaporates water from seas, lakes and rivers, and plants release water vapour from their "
    "leaves. As the warm moist air rises it cools, and the vapour condenses into tiny droplets that "
    "form clouds. When the droplets join and grow heavy enough they fall back as rain, snow, sleet or "
    "hail. Some of that water runs off the surface into streams and rivers that carry it back to the "
    "sea, some soaks into the ground and refills the aquifers, and some is frozen for a long time in "
    "glaciers and ice caps before it melts. Then the sun warms it again and the whole cycle repeats, "
    "moving the same water around the planet again and again over millions of years."
)


def test_minhash_catches_exact_and_one_word_copies_not_unrelated_and_persists(tmp_path):
    index = MinHashIndex()
    assert index.add_and_check("orig", LONG) is None
    # exact copy up to case and whitespace
    assert index.add_and_check("exact", "  " + LONG.upper().replace(" ", "\n  ")) == "orig"
    words = LONG.split()
    words[60] = "purple"  # one word changed in a 140-word text
    assert index.add_and_check("near", " ".join(words)) == "orig"
    found = index.find(" ".join(words))
    assert found is not None and found[0] == "orig" and 0.8 <= found[1] < 1.0
    other = "Photosynthesis is how green plants turn light, water and carbon dioxide into sugar and oxygen."
    assert index.add_and_check("other", other) is None
    assert index.add_and_check("short", "Why is the sky blue?") is None  # < 5 words: one shingle
    assert index.add_and_check("short2", "why is the  SKY blue?") == "short"
    assert index.add_and_check("short3", "Why is the sea blue?") is None
    assert len(index) == 4 and "near" not in index and "exact" not in index
    # only new texts were added: a duplicate answers with the original, never with a copy
    path = tmp_path / "project" / "minhash.pkl"
    index.save(path)
    loaded = MinHashIndex.load(path)
    assert sorted(loaded) == sorted(index)
    assert loaded.add_and_check("later", " ".join(words)) == "orig"
    assert (
        loaded.add_and_check("later-other", "Trains leave the station every ten minutes in the morning.")
        is None
    )
    loaded.remove("orig")
    assert loaded.find(LONG) is None
    assert MinHashIndex.load(path).find(LONG) == ("orig", 1.0)  # the saved file is unchanged
    with pytest.raises(KeyError):
        loaded.add("other", "again")


# -- the stages in a run ------------------------------------------------------------------------
def chat_rows() -> list[SFTRecord]:
    def chat(rid, q, a, quality):
        return SFTRecord(
            id=rid,
            messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            scores={"quality": quality, "difficulty": 0.5},
        )

    sky = "Sunlight is scattered by the air's molecules, and blue light is scattered the most."
    return [
        chat("r0", "Why is the sky blue?", sky, 0.4),
        chat("r1", "What is the capital of Japan?", "Tokyo.", 0.9),
        chat("r2", "Write a haiku about autumn leaves.", "Red leaves drift and fall / ...", 0.7),
        chat("r3", "What makes the sky look blue?", sky, 0.8),  # outranks r0
        chat("r4", "Explain what a unit test is.", "A test of one small unit of code.", 0.6),
        chat("r5", "What is the capital of Japan?", "Tokyo.", 0.2),  # exact copy of r1
        chat("r6", "Name two benefits of regular exercise.", "Better sleep and a stronger heart.", 0.5),
        chat("r7", "How do I reverse a string in JavaScript?", "s.split('').reverse().join('')", 0.3),
        chat(
            "r8",
            "What is the way to reverse a string using JavaScript?",
            "s.split('').reverse().join('')",
            0.35,
        ),
    ]


class Interrupted:
    """A stage that dies (KeyboardInterrupt) on its ``at``-th batch, like a killed run."""

    def __init__(self, inner, at: int) -> None:
        self.inner, self.at, self.calls = inner, at, 0
        self.name = inner.name

    def prepare(self, run, source):
        self.inner.prepare(run, source)

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner(batch)


def verdicts(run, out):
    return {
        r.id: (r.verdicts[-1].reason, r.meta.get("duplicate_of"), r.meta.get("duplicate_run"))
        for r in run.records(out.all)
    }


def test_semantic_stage_in_a_run_and_resumed(tmp_path, embedder):
    rows = chat_rows()
    run = Run(tmp_path / "whole", config={"c": 1})
    out = run.map(SemanticDedup(embedder=embedder), run.source("in", rows), batch_size=3)
    got = verdicts(run, out)
    assert {k for k, v in got.items() if v[0] == "semantic_duplicate"} == {"r0", "r5", "r7"}
    assert got["r0"][1] == "r3" and got["r5"][1] == "r1" and got["r7"][1] == "r8"
    dropped = {r.id: r for r in run.records(out.rejected)}
    assert dropped["r5"].scores["dup_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert DEFAULT_THRESHOLD <= dropped["r0"].scores["dup_similarity"] < 1.0
    assert run.count(out) == 6
    run.close()

    # killed on its second batch; the resumed stage reuses the decision (no embedding) -> same verdicts
    path = tmp_path / "killed"
    run = Run(path, config={"c": 1})
    with pytest.raises(KeyboardInterrupt):
        run.map(Interrupted(SemanticDedup(embedder=embedder), at=2), run.source("in", rows), batch_size=3)
    run.close()
    run = Run(path, config={"c": 1})
    asked = embedder.asked
    out2 = run.map(SemanticDedup(embedder=embedder), run.source("in", rows), batch_size=3)
    assert embedder.asked == asked
    assert verdicts(run, out2) == got
    run.close()


def test_near_dedup_stage_across_runs_and_resumed(tmp_path):
    rows = chat_rows()
    project = tmp_path / "project" / "near.pkl"
    run = Run(tmp_path / "a", config={"c": 1})
    out = run.map(NearDuplicates(index_path=project), run.source("in", rows), batch_size=2)
    got = verdicts(run, out)
    assert {k: v for k, v in got.items() if v[0] == "near_duplicate"} == {
        "r5": ("near_duplicate", "r1", None)
    }
    assert next(run.records(out.rejected)).scores["dup_jaccard"] == 1.0
    assert len(MinHashIndex.load(project)) == 8  # saved with the last batch: every kept row
    run.close()

    # a later run of the project: its rows that run "a" had are duplicates of run "a"'s
    later = [*rows[:2], SFTRecord(id="n1", messages=[{"role": "user", "content": "Something new entirely."}])]
    run_b = Run(tmp_path / "b", config={"c": 1})
    out_b = run_b.map(NearDuplicates(index_path=project), run_b.source("in", later), batch_size=2)
    got_b = verdicts(run_b, out_b)
    a_dir = str((tmp_path / "a").resolve())
    assert got_b == {
        "r0": ("near_duplicate", "r0", a_dir),
        "r1": ("near_duplicate", "r1", a_dir),
        "n1": (None, None, None),
    }
    run_b.close()

    # resumed: run "c" (a fresh project file) killed on its third batch, after r1's batch committed,
    # before r5's: the resumed stage must still reject r5 as r1's copy, and save each row once
    resumed_project = tmp_path / "other" / "near.pkl"
    path = tmp_path / "c"
    run = Run(path, config={"c": 1})
    with pytest.raises(KeyboardInterrupt):
        run.map(
            Interrupted(NearDuplicates(index_path=resumed_project), at=3),
            run.source("in", rows),
            batch_size=2,
        )
    assert not resumed_project.exists()
    run.close()
    run = Run(path, config={"c": 1})
    out_c = run.map(NearDuplicates(index_path=resumed_project), run.source("in", rows), batch_size=2)
    assert verdicts(run, out_c) == got
    saved = MinHashIndex.load(resumed_project)
    assert len(saved) == 8 and saved.find(conversation_text(rows[1]))[0] == f"{path.resolve()}\nr1"
    run.close()


def test_near_dedup_stage_waits_for_no_other_run_of_the_project(tmp_path):
    """Two runs deciding against one project index at once would each miss the other's rows: the
    second stops with one line naming the first, and the same command then resumes it."""
    rows = chat_rows()
    project = tmp_path / "project" / "near.pkl"
    project.parent.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time\n"
         f"fh = open({str(project) + '.lock'!r}, 'a+b'); fcntl.flock(fh, fcntl.LOCK_EX)\n"
         "fh.write(b'the run /elsewhere (pid 1)'); fh.flush(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        run = Run(tmp_path / "a", config={"c": 1})
        with pytest.raises(IndexBusy, match=r"near\.pkl: the run /elsewhere \(pid 1\) deduplicates"):
            run.map(NearDuplicates(index_path=project), run.source("in", rows), batch_size=2)
        run.close()
    finally:
        holder.kill()
        holder.wait()
    run = Run(tmp_path / "a", config={"c": 1})
    out = run.map(NearDuplicates(index_path=project), run.source("in", rows), batch_size=2)
    assert {k for k, v in verdicts(run, out).items() if v[0] == "near_duplicate"} == {"r5"}
    run.close()
    # the stage let the index go at its end: the next run of the project takes it at once
    run_b = Run(tmp_path / "b", config={"c": 1})
    out_b = run_b.map(NearDuplicates(index_path=project), run_b.source("in", rows[:2]), batch_size=2)
    assert {v[0] for v in verdicts(run_b, out_b).values()} == {"near_duplicate"}
    run_b.close()
