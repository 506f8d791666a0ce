"""Store-backed stage runner: the resume, streaming and cache mechanics every recipe shares.

A recipe is a composition of stages. Each stage has one name (``stage.name``), reads its input as a
stream of row chunks from the store (``Rows``: one or more earlier stages, kept rows by default) and
commits its output batch by batch, so nothing holds a whole stage in memory and a run killed at any
moment resumes from its last finished batch:

- ``Run.source(name, items)`` writes rows that come from outside (seed files, a code corpus);
- ``Run.map(stage, rows)`` runs a stage over fixed batches of rows (same rows -> same batches);
- ``Run.grouped(stage, rows)`` hands the stage whole groups (a prompt's K candidates), never split.

A stage may also ``prepare(run, rows)`` before its batches: a whole-stage number (a quantile, the
distribution of score gaps) computed by a query or one streaming pass, never by loading the stage.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from synth.engines.base import Completion, Engine, Request, SamplingParams
from synth.io import BadRow
from synth.records import Record, record_from_json, stable_id
from synth.store import Store, cache_key


class Stage(Protocol):
    """A stage: one name, and a function from a batch of rows to the rows it writes (kept and
    rejected, each with a verdict under ``name``)."""

    name: str

    def __call__(self, batch: list[Any]) -> list[Record]: ...


@dataclass(frozen=True)
class Rows:
    """A stream of stored rows: the rows of ``stages`` (in that order), kept ones by default.

    ``latest``: one row per id, its last appearance over the stages (a candidate that went round a
    repair loop appears once per round).
    """

    stages: tuple[str, ...]
    kept: bool | None = True
    latest: bool = False

    def __add__(self, other: Rows) -> Rows:
        if self.kept != other.kept or self.latest != other.latest:
            raise ValueError(f"cannot join {self} and {other}: one filter applies to the union")
        return Rows(self.stages + other.stages, self.kept, self.latest)

    @property
    def all(self) -> Rows:
        return Rows(self.stages, None, self.latest)

    @property
    def rejected(self) -> Rows:
        return Rows(self.stages, False, self.latest)

    def last(self) -> Rows:
        return Rows(self.stages, self.kept, True)


def rows(*stages: str, kept: bool | None = True) -> Rows:
    return Rows(tuple(stages), kept)


class CachedEngine:
    """Wraps any engine with the run's engine cache (model, request, sampling, seed).

    ``inner`` may be a factory: the engine is built on the first call that misses the cache, so a
    resumed run whose generation is finished never loads the model.
    """

    def __init__(
        self,
        engine: Engine | Callable[[], Engine],
        store: Store,
        name: str | None = None,
        model: str | None = None,
    ) -> None:
        self._inner = engine
        self.store = store
        self.name = name or engine.name  # type: ignore[union-attr]
        self.model = model or engine.model  # type: ignore[union-attr]
        self.hits = 0
        self.misses = 0

    @property
    def inner(self) -> Engine:
        if callable(self._inner) and not hasattr(self._inner, "generate"):
            self._inner = self._inner()
        return self._inner  # type: ignore[return-value]

    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        params = sampling.to_dict()  # once per call, not once per request
        keys = [cache_key(self.model, r, params) for r in requests]
        found = self.store.cache_get(keys)
        todo = [i for i, k in enumerate(keys) if k not in found]
        # one request may appear twice in a batch: generate it once
        unique = list(dict.fromkeys(keys[i] for i in todo))
        first = {keys[i]: i for i in reversed(todo)}
        self.hits += len(requests) - len(todo)
        self.misses += len(unique)
        if unique:
            fresh = self.inner.generate([requests[first[k]] for k in unique], sampling)
            new = dict(zip(unique, fresh, strict=True))
            self.store.cache_put(self.model, new)
            found.update(new)
        return [found[k] for k in keys]

    def supports_choice_logprobs(self) -> bool:
        return hasattr(self.inner, "choice_logprobs")

    def choice_logprobs(
        self, requests: list[Request], prefix: str, choices: list[str]
    ) -> list[dict[str, float]]:
        """Cached like ``generate``: the choice distribution is stored as one pseudo-completion."""
        params = {"call": "choice_logprobs", "prefix": prefix, "choices": list(choices)}
        keys = [cache_key(self.model, r, params) for r in requests]
        found = self.store.cache_get(keys)
        todo = [i for i, k in enumerate(keys) if k not in found]
        if todo:
            fresh = self.inner.choice_logprobs([requests[i] for i in todo], prefix, choices)
            new = {
                keys[i]: [
                    Completion(text="", prompt_tokens=0, completion_tokens=0, finish_reason="stop", extra=d)
                ]
                for i, d in zip(todo, fresh, strict=True)
            }
            self.store.cache_put(self.model, new)
            found.update(new)
        return [found[k][0].extra for k in keys]


class Run:
    """One run directory: its store, its event log and its stages."""

    def __init__(self, out_dir: Path | str, config: dict[str, Any] | None = None) -> None:
        self.dir = Path(out_dir)
        self.store = Store(self.dir)
        self.events = self.dir / "events.jsonl"
        self.engine: CachedEngine | None = None  # the recipe's engine behind this run's cache
        if config is not None:
            previous = self.store.get_meta("config")
            if previous is not None and _resumable(previous) != _resumable(config):
                changed = sorted(
                    k for k in set(previous) | set(config) if previous.get(k) != config.get(k) and k in config
                )
                raise ValueError(
                    f"{self.dir} holds a run with a different configuration (changed: "
                    f"{', '.join(changed) or 'fields'}); use a new --out directory (or the same command "
                    "to resume)"
                )
            self.store.set_meta("config", config)
            self.log("run_start", resumed=previous is not None)

    def close(self) -> None:
        self.store.close()

    def quarantine(self, bad: BadRow) -> None:
        """Keep a malformed input row (``--skip-invalid``) in the store, with where and why."""
        self.store.quarantine(bad.path, bad.line, bad.field, bad.error, bad.raw)

    def log(self, event: str, **fields: Any) -> None:
        """Append to events.jsonl (flushed + fsynced: tests and tools follow a run through it)."""
        line = json.dumps({"t": round(time.time(), 3), "event": event, **fields}, default=str)
        with open(self.events, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    # -- reading -------------------------------------------------------------------------------
    def records(self, source: Rows) -> Iterator[Record]:
        """Stream the records of ``source`` (for a recipe's own small passes and for tests)."""
        return self.store.iter_records(source.stages, source.kept, latest=source.latest)

    def count(self, source: Rows) -> int:
        return self.store.count(source.stages, source.kept, source.latest)

    # -- stages --------------------------------------------------------------------------------
    def source(self, name: str, items: Iterable[Record], batch_size: int = 1000) -> Rows:
        """Rows from outside the store (a seed file, a corpus), written in batches like any stage."""
        return self._run(name, _Identity(name), _chunks(((r.id, r) for r in items), batch_size), None)

    def map(self, stage: Stage, source: Rows, batch_size: int = 8, total: int | None = None) -> Rows:
        """Run ``stage`` over ``source`` in batches of ``batch_size`` rows."""
        chunks = _chunks(self._stream(source), batch_size)
        return self._run(stage.name, stage, chunks, source, total)

    def grouped(self, stage: Stage, source: Rows, batch_size: int = 1000) -> Rows:
        """Run ``stage`` over whole groups (rows sharing a ``group_key``): each batch holds complete
        groups and about ``batch_size`` rows."""
        stream = self.store.iter_rows(source.stages, source.kept, order="group", latest=source.latest)
        return self._run(stage.name, stage, _group_chunks(stream, batch_size), source)

    def _stream(self, source: Rows) -> Iterator[tuple[str, Any]]:
        for key, kind, _grp, data in self.store.iter_rows(source.stages, source.kept, latest=source.latest):
            yield key, _Lazy(kind, data)

    def _run(
        self,
        name: str,
        stage: Stage,
        chunks: Iterable[list[tuple[str, Any]]],
        source: Rows | None,
        total: int | None = None,
    ) -> Rows:
        if self.store.stage_done(name):
            return Rows((name,))
        if total is None and source is not None:
            total = self.count(source)
        self.store.begin_stage(name, total)
        if source is not None and hasattr(stage, "prepare"):
            stage.prepare(self, source)
        done = self.store.done_batches(name)
        seen = 0
        with _progress(name, total) as (bar, task):
            for chunk in chunks:
                seen += len(chunk)
                bid = stable_id(name, [k for k, _ in chunk])
                if bid in done:  # committed before a restart: not parsed, not regenerated
                    bar.advance(task, len(chunk))
                    continue
                out = stage([_load(item) for _, item in chunk])
                self.store.commit_batch(name, bid, out)
                self.log("batch_committed", stage=name, batch=bid, rows=len(out))
                bar.advance(task, len(chunk))
        if total is None:
            self.store.begin_stage(name, seen)
        self.store.end_stage(name)
        self.log("stage_done", stage=name)
        return Rows((name,))


class _Identity:
    """The stage of ``Run.source``: rows go in as they are."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, batch: list[Record]) -> list[Record]:
        return batch


class _Lazy:
    """A stored row parsed only when its batch runs (a resumed run skips finished batches unparsed)."""

    __slots__ = ("kind", "data")

    def __init__(self, kind: str, data: str) -> None:
        self.kind, self.data = kind, data


def _load(item: Any) -> Any:
    return record_from_json(item.data, item.kind) if isinstance(item, _Lazy) else item


def _chunks(items: Iterable[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    chunk: list[tuple[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _group_chunks(stream: Iterable[tuple[str, str, str, str]], size: int) -> Iterator[list[tuple[str, Any]]]:
    chunk: list[tuple[str, Any]] = []
    group: str | None = None
    for key, kind, grp, data in stream:
        if grp != group and len(chunk) >= size:
            yield chunk
            chunk = []
        group = grp
        chunk.append((key, _Lazy(kind, data)))
    if chunk:
        yield chunk


def _resumable(config: dict[str, Any]) -> dict[str, Any]:
    # --skip-invalid changes no row that a run without it would write (that run stops instead)
    return {k: v for k, v in config.items() if k != "skip_invalid"}


class _progress:
    def __init__(self, desc: str, total: int | None) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=False,
            disable=os.environ.get("SYNTH_NO_PROGRESS") == "1",
        )
        self.task = self.bar.add_task(desc, total=total)

    def __enter__(self):
        self.bar.start()
        return self.bar, self.task

    def __exit__(self, *exc) -> None:
        self.bar.stop()
