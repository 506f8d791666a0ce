"""Long context (Llama 3 section 4.3.4, "synthetic data generation" for long context), as a recipe:

    documents -> chunks of N tokens -> random chunk -> question (+ answer) -> support judge (chunk alone)
                                                        -> SFT row: whole document + question -> answer
                         \\-> every chunk summarised -> summary of the summaries
                                                        -> SFT row: whole document -> summary
                                                        -> global question + answer -> support judge
                                                        -> SFT row: whole document + question -> answer
    repositories -> import graph (ast) -> a file imported by >= 5 others, removed
                 -> which files depend on it? (graded exactly)  -> SFT row
                 -> write the missing file (sandbox: dependents import, tests pass) -> SFT row
    every SFT row -> its length in the model's tokens -> a length bucket, or rejected

The paper, in its words and numbers: question answering ("we split these documents into chunks of 8K
tokens, and prompted an earlier version of the Llama 3 model to generate QA pairs conditional on randomly
selected chunks. During training, the whole document is used as context"), summarization ("hierarchical
summarization of long-context documents by first summarizing the chunks of 8K input length ... and then
summarizing the summaries. During training we provide the full document and prompt the model to
summarize the document while preserving all the important details. We also generate QA pairs based on
the summaries ... with questions that require global understanding of the whole long document"), and
long-context code reasoning ("we parse Python files to identify import statements and determine their
dependencies. From here, we select the most commonly depended-upon files, specifically those referenced
by at least five other files. We remove one of these key files from a repository and prompt the model to
identify which files depended on the missing file and to generate the necessary missing code"); the rows
are then categorised "based on the sequence length (16K, 32K, 64K and 128K)". Its 8K chunks and 16K-128K
buckets are fractions of its 128K context; the defaults here are the same fractions of the context of the
model in use (``synth.stages.long_context.tokens``): for the embedded 8K model, 512-token chunks and
1K/2K/4K/8K buckets, always counted with the model's own tokenizer. ``--buckets 16384,32768,65536,131072
--chunk-tokens 8192`` are the paper's, for a 128K model. At least 5 dependents is the paper's number.

Beyond the paper: a reply that holds only a question is answered by a second call, from the same chunk
(or summary); a pair is kept only when a judge that sees the chunk (or the summary) alone finds the
answer supported (the paper does not say how its pairs were filtered); the dependents are graded exactly
against the import graph (set equality keeps a row; precision, recall and F1 are recorded on every
answer), and a rewritten file is kept only when, in the sandbox, every dependent imports and the
repository's tests pass with it, on a task whose repository passes as it is and fails without the file
(so the check can tell). Not done here: Llama 3 mixes 0.1% of such data into its SFT data (a data-mix
decision for ``synth round``); the summaries and the rewrites of a weak teacher are not judged beyond
these rules. The shipped inputs are small (``pipelines/data/long_context``: three documents of 1-2K
tokens and one 11-file repository), sized for the embedded 135M model on a CPU, whose yield is low: the
mechanics are the same with a strong teacher and long documents.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from pathlib import Path

from sandboxes import Limits
from synth.config import ConfigError, option
from synth.pipeline import Rows, Run
from synth.prompts import load_prompt
from synth.recipe import Outputs, RecipeConfig, recipe
from synth.stages.execute import Sandbox
from synth.stages.judge import JudgeStage
from synth.stages.long_context.documents import AllChunks, ChunkDocuments, PickChunks, read_documents
from synth.stages.long_context.items import CAPABILITY
from synth.stages.long_context.qa import AnswerQA, Assemble, WriteQA, judge_variables
from synth.stages.long_context.repo import read_repos
from synth.stages.long_context.repo_tasks import (
    CheckRepo,
    FindDependents,
    FindKeyFiles,
    GradeDependents,
    WriteMissingFile,
)
from synth.stages.long_context.summary import CollectSummaries, Summarise
from synth.stages.long_context.tokens import (
    LengthBuckets,
    Tokens,
    bucket_counts,
    check_tokenizer,
    resolve_lengths,
)

DATA = Path(__file__).resolve().parents[2] / "pipelines" / "data" / "long_context"
SHIPPED_DOCUMENTS = str(DATA / "documents")
SHIPPED_REPOS = str(DATA / "repos")
SHIPPED_LICENSE = "Apache-2.0: written for this repository (pipelines/data/long_context)"
TASKS = ("qa", "summary", "repo")
ROW_ROOM = 96  # tokens a row's instruction or question adds to its document (besides the answer)
SCORE = "qa_support"


@dataclass(kw_only=True)
class LongContextConfig(RecipeConfig):
    corpus: str = option(
        SHIPPED_DOCUMENTS, "Folder of long documents (every file with one of --extensions, sorted by path)."
    )
    extensions: list[str] = option(
        default_factory=lambda: [".md", ".txt", ".rst"], help="File types of the corpus that are documents."
    )
    documents_limit: int = option(0, "Use only the first N documents (0: all).", min=0)
    repos: str = option(
        SHIPPED_REPOS,
        "Folder of Python repositories: each sub-folder is one, or the folder itself when it holds .py files "
        "or a package at its top.",
    )
    tasks: list[str] = option(default_factory=lambda: list(TASKS), help=f"What to make: {', '.join(TASKS)}.")
    tokenizer: str | None = option(
        None, "Tokenizer of every token count (folder, cached hub id or 'embedded'); default: the model's."
    )
    context_length: int = option(
        0,
        "The model's context in tokens; 0: its own (the server's max_model_len with the openai engine, else "
        "the model's max_position_embeddings: 8192 for the embedded model).",
        min=0,
    )
    chunk_tokens: int = option(
        0, "Chunk size in tokens (Llama 3: 8K of 128K); 0: a sixteenth of the context (512 for 8K).", min=0
    )
    buckets: list[int] = option(
        default_factory=list,
        help="Length buckets, upper bounds in tokens (Llama 3: 16384,32768,65536,131072); empty: an eighth, "
        "a quarter, a half and all of the context (1K,2K,4K,8K for the embedded model's 8K).",
    )
    min_chunks: int = option(2, "A document must fill at least this many chunks to count as long.", min=1)
    qa_per_document: int = option(
        2, "Questions per document, each from a different chunk picked at random (seeded).", min=0
    )
    global_questions: int = option(1, "Questions per document written from its summary.", min=0)
    qa_threshold: float = option(
        7.0,
        "Keep a question when the judge, seeing its chunk (or the summary) alone, rates the answer's support "
        "at least this (1-10).",
        min=1.0,
        max=10.0,
    )
    judge_max_tokens: int = option(32, "Max tokens of the support judge's reply.", min=1)
    min_dependents: int = option(5, "A key file is imported by at least this many other files.", min=1)
    files_per_repo: int = option(1, "Key files taken out per repository, one task each.", min=1)
    k: int = option(2, "Answers sampled per repository task (its dependents; the missing file).", min=1)
    max_tokens: int = option(256, "Max new tokens of a question and answer, or a summary.", min=1)
    code_max_tokens: int = option(768, "Max new tokens of a rewritten file.", min=1)
    backend: str = option(
        "local", "Sandbox backend: local (bubblewrap) or docker.", choices=("local", "docker")
    )
    unsafe_no_isolation: bool = option(
        False, "Run repository checks without isolation (local backend; trusted hosts only)."
    )
    timeout_s: float = option(
        20.0, "Wall-clock limit of one repository check in the sandbox, seconds.", min=0.1
    )
    memory_mb: int = option(512, "Memory limit of one repository check in the sandbox, MiB.", min=16)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ConfigError(f"tasks: choose from {', '.join(TASKS)}, got {list(self.tasks)}")
        try:
            buckets = [int(b) for b in self.buckets]
        except (TypeError, ValueError):
            buckets = [0]
        if any(b < 1 for b in buckets):
            raise ConfigError(f"buckets must be positive token counts, got {list(self.buckets)}")
        self.buckets = buckets
        if "qa" in self.tasks and len(self.tasks) == 1 and not self.qa_per_document:
            raise ConfigError("tasks: qa alone with qa_per_document 0 makes nothing")
        if not self.extensions:
            raise ConfigError("extensions: give at least one file type, e.g. .md")

    def sandbox(self) -> Sandbox:
        limits = Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        return Sandbox(backend=self.backend, unsafe_no_isolation=self.unsafe_no_isolation, limits=limits)

    def check(self) -> None:
        check_tokenizer(self.tokenizer or self.model)
        if "repo" in self.tasks:
            self.sandbox().check()


@recipe("long-context", LongContextConfig)
def long_context(run: Run, cfg: LongContextConfig) -> Outputs:
    """Long documents -> chunk QA + hierarchical summaries; repositories -> dependents + missing file."""
    tokens = Tokens(cfg.tokenizer or cfg.model)
    lengths = resolve_lengths(cfg.context_length, cfg.chunk_tokens, cfg.buckets, engine_name=cfg.engine,
                              engine=run.engine, model=cfg.model, tokenizer=cfg.tokenizer)  # fmt: skip
    llm = dict(engine=run.engine, round=cfg.round)
    one = cfg.sampling(n=1)
    bs = cfg.batch_size
    sources = []
    rows: list[Rows] = []

    if "qa" in cfg.tasks or "summary" in cfg.tasks:
        # 1. documents, cut into chunks of the model's tokens (too short or too long: rejected)
        sources.append(_source("documents", cfg.corpus, SHIPPED_DOCUMENTS))
        limit = cfg.documents_limit or None
        documents = run.source("documents", read_documents(cfg.corpus, cfg.extensions, limit, cfg.round))
        chunker = ChunkDocuments(lengths, tokens, cfg.min_chunks, room=cfg.max_tokens + ROW_ROOM)
        docs = run.map(chunker, documents, bs)
        qa_row = load_prompt("long_context/qa_row")
        judge = dict(variables=judge_variables, score=SCORE, threshold=cfg.qa_threshold,
                     max_tokens=cfg.judge_max_tokens)  # fmt: skip
        rubric = load_prompt("long_context/qa_judge")

        # 2. QA from random chunks, judged against the chunk alone; the row gets the whole document
        if "qa" in cfg.tasks and cfg.qa_per_document:
            picked = run.map(PickChunks(cfg.qa_per_document, cfg.seed), docs, bs)
            pairs = run.map(WriteQA(sampling=one, **llm), picked, bs)
            pairs = run.map(AnswerQA(sampling=one, **llm), pairs, bs)  # replies that held only a question
            supported = run.map(JudgeStage("qa_judge", run.engine, rubric, **judge), pairs, bs)
            rows.append(run.grouped(Assemble("qa_rows", "qa", qa_row), docs + supported))

        # 3. hierarchical summaries: chunks, then the summaries; + questions that need the whole document
        if "summary" in cfg.tasks:
            chunks = run.map(AllChunks(), docs, bs)
            chunk_summaries = run.map(Summarise(sampling=one, **llm), chunks, bs)
            collected = run.grouped(CollectSummaries(), docs + chunk_summaries)
            upper = load_prompt("long_context/summarise_document")
            second = Summarise(name="summarise_document", prompt=upper, sampling=one, **llm)
            summaries = run.map(second, collected, bs)
            summary_row = load_prompt("long_context/summary_row")
            rows.append(run.grouped(Assemble("summary_rows", "summary", summary_row), docs + summaries))
            if cfg.global_questions:
                ask = WriteQA(name="write_global_qa", template="long_context/global_qa",
                              sampling=cfg.sampling(n=cfg.global_questions), **llm)  # fmt: skip
                global_pairs = run.map(ask, summaries, bs)
                global_pairs = run.map(
                    AnswerQA(name="answer_global_qa", sampling=one, **llm), global_pairs, bs
                )
                judged = run.map(JudgeStage("global_qa_judge", run.engine, rubric, **judge), global_pairs, bs)
                rows.append(run.grouped(Assemble("global_qa_rows", "global_qa", qa_row), docs + judged))

    # 4. repositories: key files, checked removable; dependents graded exactly; the file rewritten
    if "repo" in cfg.tasks:
        sources.append(_source("repositories", cfg.repos, SHIPPED_REPOS))
        sandbox = cfg.sandbox()
        check = dict(sandbox=sandbox, limits=sandbox.limits)
        repos = run.source("repos", read_repos(cfg.repos, round=cfg.round))
        tasks = run.map(FindKeyFiles(cfg.min_dependents, cfg.files_per_repo), repos, bs)
        tasks = run.map(CheckRepo(name="check_original", mode="original", **check), tasks, bs)
        tasks = run.map(CheckRepo(name="check_removed", mode="removed", **check), tasks, bs)
        answers = run.map(FindDependents(sampling=cfg.sampling(), **llm), tasks, bs)
        rows.append(run.map(GradeDependents(), answers, bs * cfg.k))
        rewrite = WriteMissingFile(sampling=cfg.sampling(max_tokens=cfg.code_max_tokens), **llm)
        rewrites = run.map(rewrite, tasks, bs)
        rows.append(run.map(CheckRepo(name="check_rewrite", mode="rewrite", **check), rewrites, bs))
    run.store.set_meta("data_sources", sources)

    # 5. every row in its length bucket, in the model's tokens; longer than the context: rejected
    bucketed = run.map(LengthBuckets(lengths, tokens), functools.reduce(operator.add, rows), 100)
    report = bucket_counts(run.store, bucketed.stages[0], lengths)
    run.store.set_meta("length_buckets", report)
    run.store.set_meta("outcomes", {f"rows {b}": n for b, n in report["rows"].items()})
    return Outputs(prompts=bucketed, capability=CAPABILITY, sft=[bucketed])


def _source(name: str, path: str, shipped: str) -> dict[str, str]:
    ours = Path(path).resolve() == Path(shipped).resolve()
    return {
        "name": name,
        "path": Path(path).name,
        "license": SHIPPED_LICENSE if ours else "the user's (not recorded)",
    }
