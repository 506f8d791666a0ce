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

Resuming is safe against a changed command or input:

- the run's configuration is stored; a rerun whose configuration differs in a field that changes rows
  is refused, naming each such field with its old and new value (fields that change no row, e.g. the
  run directory, a server's URL, the batch size, are not compared); a run that has written no row yet
  (beyond its sources) blocks nothing: its configuration is replaced and it starts over;
- a source (``Run.source``) is read again on every resume and compared with the stored rows: a seed
  file with added, edited or removed rows is refused (``SourceChanged``) with the counts and ids (a
  source stopped half-way: the rows it wrote must begin the input unchanged);
- a stage resumed keeps the batch size its committed batches had (the same rows -> the same batches).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
        # "whole": choices are disjoint whole labels (synth.engines.choices); older entries were not
        params = {"call": "choice_logprobs", "whole": True, "prefix": prefix, "choices": list(choices)}
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


class ConfigChanged(ValueError):
    """A rerun whose configuration changes rows the run has written (one line, naming each field)."""


class SourceChanged(ValueError):
    """A source (seed file, corpus) whose rows differ from those the run started from (one line)."""


class EmptySource(ValueError):
    """A source without a single row: nothing to run."""


class Run:
    """One run directory: its store, its event log and its stages.

    ``config``: the run's configuration, stored; a resume whose configuration differs outside
    ``neutral`` (fields that change no row) is refused, unless the run has written no row yet.
    """

    def __init__(
        self,
        out_dir: Path | str,
        config: dict[str, Any] | None = None,
        neutral: Iterable[str] = ("skip_invalid",),
    ) -> None:
        self.dir = Path(out_dir)
        self.store = Store(self.dir)
        self.events = self.dir / "events.jsonl"
        self.engine: CachedEngine | None = None  # the recipe's engine behind this run's cache
        # batches a concurrent stage keeps in flight (an OpenAI-compatible server's request window
        # stays full across batch boundaries while a slow retry holds one batch back)
        self.overlap = 1
        if config is not None:
            try:
                self._open(config, set(neutral))
            except BaseException:
                self.store.close()
                raise

    def _open(self, config: dict[str, Any], neutral: set[str]) -> None:
        previous = self.store.get_meta("config")
        if previous is not None:
            changed = [
                k
                for k in sorted(set(previous) | set(config))
                if k not in neutral and previous.get(k, _UNSET) != config.get(k, _UNSET)
            ]
            if changed and not self.store.has_rows(exclude=self.store.get_meta("sources", [])):
                # a run that wrote no row but its sources (a failed first command) blocks nothing
                self.store.reset()
                previous, changed = None, []
            if changed:
                shown = "; ".join(
                    f"{k}: {_shown(previous.get(k, _UNSET))} -> {_shown(config.get(k, _UNSET))}"
                    for k in changed
                )
                raise ConfigChanged(
                    f"{self.dir} holds a run with a different configuration ({shown}); use a new --out "
                    "directory, or the run's own options to resume it"
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
        """Rows from outside the store (a seed file, a corpus), written in batches like any stage.

        Finished, it is read again on each resume and compared with the stored rows: a changed input
        raises ``SourceChanged`` (counts and ids of the rows added, edited and removed). Stopped
        half-way, the rows it wrote must be the input's first rows, unchanged (``SourceChanged`` names
        the first that is not); it goes on after them. No row at all raises ``EmptySource``."""
        if self.store.stage_done(name):
            self._check_unchanged(name, items)
            return Rows((name,))
        sources = self.store.get_meta("sources", [])
        if name not in sources:
            self.store.set_meta("sources", [*sources, name])
        rows = _nonempty(name, items)
        if self.store.stage_begun(name):  # stopped half-way: what it wrote must begin the input
            rows = self._same_start(name, rows)
        return self._run(
            name, _Identity(name), _chunks(((r.id, r) for r in rows), batch_size), None, None, batch_size
        )

    def _check_unchanged(self, name: str, items: Iterable[Record]) -> None:
        diff = self.store.diff_rows(name, ((r.id, r.to_json()) for r in items))
        if any(n for n, _ in diff.values()):
            counts = ", ".join(f"{n} {kind}" for kind, (n, _) in diff.items())
            ids = "; ".join(
                f"{kind}: {', '.join(keys)}{' ...' if n > len(keys) else ''}"
                for kind, (n, keys) in diff.items()
                if n
            )
            raise SourceChanged(
                f"{self.dir}: the input of stage '{name}' changed since this run started ({counts}; {ids}); "
                "restore it to resume this run, or use a new --out directory for the new input"
            )

    def _same_start(self, name: str, items: Iterable[Record]) -> Iterator[Record]:
        """``items``, checked against the rows a source stopped half-way wrote, in order: those must
        be the input's first rows, as they are (the batches they filled are not written again)."""
        stored = self.store.iter_rows(name)
        try:
            for n, rec in enumerate(items, start=1):
                old = next(stored, None)
                if old is not None and (old[0] != rec.id or old[3] != rec.to_json()):
                    what = f"id {rec.id}" + ("" if old[0] == rec.id else f", where the run wrote id {old[0]}")
                    raise SourceChanged(
                        f"{self.dir}: the input of stage '{name}' changed since this run started (its row "
                        f"{n}, {what}, differs from the row the run wrote); restore it to resume this run, "
                        "or use a new --out directory for the new input"
                    )
                yield rec
            old = next(stored, None)
            if old is not None:
                raise SourceChanged(
                    f"{self.dir}: the input of stage '{name}' changed since this run started (it has fewer "
                    f"rows than the run wrote: id {old[0]} is gone); restore it to resume this run, or use a "
                    "new --out directory for the new input"
                )
        finally:
            stored.close()

    def map(self, stage: Stage, source: Rows, batch_size: int = 8, total: int | None = None) -> Rows:
        """Run ``stage`` over ``source`` in batches of ``batch_size`` rows (a resumed stage: those it
        began with)."""
        batch_size = self.store.stage_batch_size(stage.name) or batch_size
        chunks = _chunks(self._stream(source), batch_size)
        return self._run(stage.name, stage, chunks, source, total, batch_size)

    def grouped(self, stage: Stage, source: Rows, batch_size: int = 1000) -> Rows:
        """Run ``stage`` over whole groups (rows sharing a ``group_key``): each batch holds complete
        groups and about ``batch_size`` rows (a resumed stage: those it began with)."""
        batch_size = self.store.stage_batch_size(stage.name) or batch_size
        stream = self.store.iter_rows(source.stages, source.kept, order="group", latest=source.latest)
        return self._run(stage.name, stage, _group_chunks(stream, batch_size), source, None, batch_size)

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
        batch_size: int | None = None,
    ) -> Rows:
        if self.store.stage_done(name):
            return Rows((name,))
        if total is None and source is not None:
            total = self.count(source)
        self.store.begin_stage(name, total, batch_size)
        if source is not None and hasattr(stage, "prepare"):
            stage.prepare(self, source)
        try:
            return self._batches(name, stage, chunks, total)
        finally:
            if hasattr(stage, "release"):  # what ``prepare`` took (a lock), finished or not
                stage.release()

    def _batches(
        self, name: str, stage: Stage, chunks: Iterable[list[tuple[str, Any]]], total: int | None
    ) -> Rows:
        done = self.store.done_batches(name)
        seen = 0
        # batches in flight at once: only for stages that declare themselves safe (``concurrent``:
        # no state across batches, only engine calls), and only where the run asks (``overlap``)
        width = self.overlap if getattr(stage, "concurrent", False) else 1
        pending: deque[tuple[str, int, Future]] = deque()
        with _progress(name, total) as (bar, task), _Pool(width) as pool:

            def commit(bid: str, n: int, out: list[Record]) -> None:
                self.store.commit_batch(name, bid, out)
                self.log("batch_committed", stage=name, batch=bid, rows=len(out))
                bar.advance(task, n)

            for chunk in chunks:
                seen += len(chunk)
                bid = stable_id(name, [k for k, _ in chunk])
                if bid in done:  # committed before a restart: not parsed, not regenerated
                    bar.advance(task, len(chunk))
                    continue
                batch = [_load(item) for _, item in chunk]
                if pool is None:
                    commit(bid, len(chunk), stage(batch))
                    continue
                pending.append((bid, len(chunk), pool.submit(stage, batch)))
                while len(pending) >= width:  # commits stay in input order, one per batch
                    first, n, fut = pending.popleft()
                    commit(first, n, fut.result())
            while pending:
                first, n, fut = pending.popleft()
                commit(first, n, fut.result())
        if total is None:
            self.store.begin_stage(name, seen)
        self.store.end_stage(name)
        self.log("stage_done", stage=name)
        return Rows((name,))


class _Pool:
    """A thread pool for ``width`` > 1, else nothing (the stage runs in the driver's thread).

    On an error the batches still in flight are cancelled or awaited, never committed: the run
    resumes from the last batch committed in order."""

    def __init__(self, width: int) -> None:
        self.pool = ThreadPoolExecutor(width, thread_name_prefix="batch") if width > 1 else None

    def __enter__(self) -> ThreadPoolExecutor | None:
        return self.pool

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


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


_UNSET = object()


def _shown(value: Any) -> str:
    return "(unset)" if value is _UNSET else json.dumps(value, default=str)


def _nonempty(name: str, items: Iterable[Record]) -> Iterator[Record]:
    n = 0
    for item in items:
        n += 1
        yield item
    if n == 0:  # raised before the stage is marked done: the same command stops here again
        raise EmptySource(f"no input rows for stage '{name}': nothing to run")


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
