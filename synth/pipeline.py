"""Store-backed stage runner: the resume and cache mechanics every generator shares.

A generator is a composition of small stages. ``Run.map_batches`` runs a stage over its inputs in
fixed batches (same inputs -> same batches), committing each finished batch with its output rows;
``Run.apply`` runs a cheap stage as one batch. Both return every output row of the stage, kept and
rejected, from the store, so a resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from synth.engines.base import Completion, Engine, Request, SamplingParams
from synth.io import BadRow
from synth.records import Record, stable_id
from synth.store import Store, cache_key

T = TypeVar("T")


class CachedEngine:
    """Wraps any engine with the run's engine cache (model, request, sampling, seed)."""

    def __init__(self, engine: Engine, store: Store) -> None:
        self.inner = engine
        self.store = store
        self.name = engine.name
        self.model = engine.model
        self.hits = 0
        self.misses = 0

    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        keys = [cache_key(self.model, r, sampling) for r in requests]
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
        if config is not None:
            previous = self.store.get_meta("config")
            if previous is not None and _resumable(previous) != _resumable(config):
                raise ValueError(
                    f"{self.dir} holds a run with a different configuration; "
                    "use a new --out directory (or the same command to resume)"
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

    def map_batches(
        self,
        stage: str,
        items: Sequence[T],
        fn: Callable[[list[T]], list[Record]],
        *,
        key: Callable[[T], str] = lambda item: item.id,  # type: ignore[attr-defined]
        batch_size: int = 8,
        desc: str | None = None,
    ) -> list[Record]:
        self.store.begin_stage(stage, len(items))
        if not self.store.stage_done(stage):
            batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
            ids = [stable_id(stage, [key(x) for x in b]) for b in batches]
            done = self.store.done_batches(stage)
            todo = [(b, bid) for b, bid in zip(batches, ids, strict=True) if bid not in done]
            with _progress(desc or stage, len(items), len(items) - sum(len(b) for b, _ in todo)) as (
                bar,
                task,
            ):
                for batch, bid in todo:
                    # stages append verdicts in place: give them copies, so the caller's rows (often
                    # an earlier stage's output, read again by a later stage) stay as stored
                    out = fn(copy.deepcopy(batch))
                    self.store.commit_batch(stage, bid, out)
                    self.log("batch_committed", stage=stage, batch=bid, rows=len(out))
                    bar.advance(task, len(batch))
            self.store.end_stage(stage)
            self.log("stage_done", stage=stage)
        return self.store.records(stage)

    def apply(self, stage: str, items: Sequence[T], fn: Callable[[list[T]], list[Record]]) -> list[Record]:
        """A cheap stage, run as a single batch."""
        return self.map_batches(stage, items, fn, batch_size=max(1, len(items)), desc=stage)


def _resumable(config: dict[str, Any]) -> dict[str, Any]:
    # --skip-invalid changes no row that a run without it would write (that run stops instead)
    return {k: v for k, v in config.items() if k != "skip_invalid"}


class _progress:
    def __init__(self, desc: str, total: int, completed: int) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=False,
            disable=os.environ.get("SYNTH_NO_PROGRESS") == "1",
        )
        self.task = self.bar.add_task(desc, total=total, completed=completed)

    def __enter__(self):
        self.bar.start()
        return self.bar, self.task

    def __exit__(self, *exc) -> None:
        self.bar.stop()


def kept(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if r.kept]
