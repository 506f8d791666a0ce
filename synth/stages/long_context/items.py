"""The long-context recipe's typed working items, field by field.

A corpus file is a ``Document``; the chunk stage gives it its token count and its ``chunks``. A
``Chunk`` is one of them (every chunk for the summaries; a few, picked at random, for questions). A
question written from a chunk, or from the document's summary, is a ``QAPair`` (its ``context`` is what
the judge sees). Chunk summaries are ``Summary`` rows (``level`` 1); a document's are gathered into one
``Summaries`` row and summarised again (``level`` 2). A Python repository is a ``Repo``; each file that
at least N others import becomes a ``RepoTask`` (the repository without it, and its exact dependents);
answers to a task are ``DependentsAnswer`` and ``MissingFile`` rows. Every row of a document carries
``doc_id`` as its group key, so a grouped stage sees the document with its rows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synth.records import Item, NonEmpty, register_kind

CAPABILITY = "long_context"


@register_kind
class Document(Item):
    """A long document of the corpus (id: its path inside the corpus); ``tokens`` and ``chunks`` are set
    by the chunk stage (the chunks, joined, are the text)."""

    kind: Literal["lc_document"] = "lc_document"
    path: str
    text: NonEmpty
    tokens: int | None = None
    chunks: list[str] = Field(default_factory=list)


class _OfDocument(Item):
    doc_id: str
    title: str = ""  # the document's path, as prompts name it

    @property
    def group_key(self) -> str:
        return self.doc_id


@register_kind
class Chunk(_OfDocument):
    """Chunk ``index`` (from 0) of the ``of`` chunks of a document."""

    kind: Literal["lc_chunk"] = "lc_chunk"
    index: int
    of: int
    text: NonEmpty


@register_kind
class QAPair(_OfDocument):
    """A question and its answer, written from ``context``: a chunk (``source`` 'chunk', ``index``) or the
    document's summary (``source`` 'summary'); ``answer`` None until a reply that held only the question
    is answered."""

    kind: Literal["lc_qa"] = "lc_qa"
    source: Literal["chunk", "summary"]
    index: int | None = None
    context: NonEmpty
    question: NonEmpty
    answer: NonEmpty | None = None


@register_kind
class Summary(_OfDocument):
    """A summary of chunk ``index`` (``level`` 1) or of the chunk summaries, the whole document
    (``level`` 2)."""

    kind: Literal["lc_summary"] = "lc_summary"
    level: int
    index: int | None = None
    summary: NonEmpty


@register_kind
class Summaries(_OfDocument):
    """A document's chunk summaries, in order: the input of the summary of summaries."""

    kind: Literal["lc_summaries"] = "lc_summaries"
    summaries: list[NonEmpty] = Field(min_length=1)


@register_kind
class Repo(Item):
    """A Python repository (id: its folder name): every .py file, path -> source."""

    kind: Literal["lc_repo"] = "lc_repo"
    root: str
    files: dict[str, str]


@register_kind
class RepoTask(Item):
    """A repository with one key file taken out: ``removed`` (its path) and ``original`` (its source),
    the files that import it (``dependents``, exact, sorted) and their module names, the other files,
    the repository's test files and its import roots (``.``, or ``src`` for a src layout)."""

    kind: Literal["lc_repo_task"] = "lc_repo_task"
    repo: str
    removed: str
    original: str
    dependents: list[str]
    dependent_modules: list[str]
    files: dict[str, str]
    tests: list[str] = Field(default_factory=list)
    roots: list[str] = Field(default_factory=lambda: ["."])


@register_kind
class DependentsAnswer(Item):
    """The model's answer to "which files depend on the removed one?", and the paths it named."""

    kind: Literal["lc_dependents"] = "lc_dependents"
    task_id: str
    removed: str
    request: NonEmpty  # the user turn that asked (the SFT row's)
    reply: str
    predicted: list[str]
    dependents: list[str]


@register_kind
class MissingFile(Item):
    """The model's rewrite of the removed file (``code``), with what the sandbox check needs."""

    kind: Literal["lc_missing_file"] = "lc_missing_file"
    task_id: str
    removed: str
    request: NonEmpty
    reply: str
    code: str
    dependents: list[str]
    dependent_modules: list[str]
    files: dict[str, str]
    tests: list[str] = Field(default_factory=list)
    roots: list[str] = Field(default_factory=lambda: ["."])
