"""What `synth view` shows, as queries over a run's store (never a stage loaded into memory).

A page of rows is one ``LIMIT``/``OFFSET`` query and its count another; facets and score histograms
are aggregates (histograms over an evenly spaced sample of at most ``SAMPLE_ROWS`` rows of a bigger
stage, said on the page). Every query goes through ``RunReader.query``: a read-only connection opened
for the query when no run writes the store, else the running run's own answer (``synth.live``: DuckDB
admits no second process beside its writer). The viewer never writes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from synth import live
from synth.evaluate.rounds import metric_series, round_numbers
from synth.stats import read_progress
from synth.store import DB_NAME, RunBusy, Store, funnel_of, lock_holder

PAGE_MAX = 200  # rows per page at most
SAMPLE_ROWS = 100_000  # score histograms of a bigger stage use every k-th row
PREVIEW_CHARS = 240


class ViewError(ValueError):
    """A request the viewer cannot answer (unknown run or stage, a bad filter): HTTP 400."""


def _one_connection(method: Any) -> Any:
    """The method's queries share one connection (``RunReader.reading``)."""

    @functools.wraps(method)
    def wrapper(self: RunReader, *args: Any, **kwargs: Any) -> Any:
        with self.reading():
            return method(self, *args, **kwargs)

    return wrapper


class RunReader:
    """Read-only queries over one run directory's store, whether or not a run writes it now."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self._cache: dict[tuple, tuple[Any, Any]] = {}  # (what, ...) -> (signature, value)
        self._lock = threading.Lock()
        self._local = threading.local()  # the connection of the request this thread answers

    # -- transport -----------------------------------------------------------------------
    def writer(self) -> tuple[int | None, str] | None:
        """(pid, command) of the run writing the store now, or None."""
        return lock_holder(self.run_dir)

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """One way in for all the queries of a request (this thread's): a read-only connection
        opened once, or the running run's socket; nested uses share it."""
        if getattr(self._local, "query", None) is not None:
            yield self._local.query
            return
        store = None
        if self.writer() is None:
            with contextlib.suppress(RunBusy):  # a run began between the check and the open
                store = Store(self.run_dir, read_only=True)
        if store is None:
            self._local.query = lambda sql, args=(): live.query(self.run_dir, sql, list(args))
        else:
            store.db.execute("SET enable_progress_bar = false")
            self._local.query = store.query
        try:
            yield self._local.query
        finally:
            self._local.query = None
            if store is not None:
                store.close()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self.reading() as query:
            return query(sql, args)

    def cached(self, what: tuple, signature: Any, compute: Any) -> Any:
        """``compute()`` once per ``signature`` (a stage's row count: a finished stage is asked once,
        a growing one again when it has grown) and version of the store file (a run redone in place)."""
        with contextlib.suppress(OSError):
            signature = (signature, (self.run_dir / DB_NAME).stat().st_mtime_ns)
        with self._lock:
            hit = self._cache.get(what)
        if hit is not None and hit[0] == signature:
            return hit[1]
        value = compute()
        with self._lock:
            self._cache[what] = (signature, value)
        return value

    # -- the run -------------------------------------------------------------------------
    def state(self, snap: dict[str, Any] | None = None) -> dict[str, Any]:
        holder = self.writer()
        snap = snap if snap is not None else read_progress(self.run_dir) or {}
        out: dict[str, Any] = {"live": holder is not None, "updated": snap.get("updated")}
        if holder is not None:
            out["pid"], out["command"] = holder[0], holder[1] or snap.get("command", "")
        return out

    def funnel(self) -> dict[str, Any]:
        """The funnel: a running run's progress snapshot (rewritten as batches commit, at most 0.5 s
        behind; reading it costs the run nothing, where the page polling the run's socket would have
        it count its rows every few seconds), else the store's own counts."""
        snap = read_progress(self.run_dir)
        state = self.state(snap or {})
        if state["live"] and snap is not None:
            return {**state, "funnel": snap.get("funnel", []), "quarantined": snap.get("quarantined", 0)}
        with self.reading() as query:  # a run without a snapshot yet answers through its socket
            funnel = funnel_of(query)
            quarantined = query("SELECT count(*) FROM quarantine")[0][0]
        return {**state, "funnel": funnel, "quarantined": quarantined}

    @_one_connection
    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.query("SELECT key, value FROM meta"):
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        kinds: dict[str, dict[str, int]] = {}
        for stage, kind, n in self.query("SELECT stage, kind, count(*) FROM records GROUP BY ALL"):
            kinds.setdefault(stage, {})[kind] = n
        return {
            "recipe": config.get("recipe") if isinstance(config := out.get("config"), dict) else None,
            "config": out.get("config"),
            "outputs": out.get("outputs") or {},
            "capability": out.get("capability"),
            "kinds": kinds,
        }

    def stage_rows(self, stage: str) -> int:
        rows = self.query("SELECT count(*) FROM records WHERE stage = ?", [stage])
        return int(rows[0][0])

    @_one_connection
    def facets(self, stage: str) -> dict[str, Any]:
        """What a stage's rows can be filtered by: capabilities, rounds, score names, reasons."""
        n = self.stage_rows(stage)

        def compute() -> dict[str, Any]:
            # one pass over the stage (each row's JSON parsed once for capability and round)
            values = (
                "SELECT json_extract_string(data, ['$.provenance.capability', '$.provenance.round']) AS cr, "
                "json_keys(data, '$.scores') AS k FROM records WHERE stage = ?"
            )
            caps, rounds, keys = self.query(
                f"WITH x AS ({values}) SELECT list(DISTINCT cr[1]), list(DISTINCT cr[2]), list(DISTINCT k) "
                "FROM x",
                [stage],
            )[0]
            reasons = self.query(
                "SELECT reason, count(*) FROM records WHERE stage = ? AND NOT kept GROUP BY reason "
                "ORDER BY count(*) DESC, reason",
                [stage],
            )
            return {
                "capabilities": sorted(c for c in caps or [] if c is not None),
                "rounds": sorted({int(r) for r in rounds or [] if str(r).lstrip("-").isdigit()}),
                "scores": sorted({name for names in keys or [] for name in names or []}),
                "reasons": {r if r is not None else "": c for r, c in reasons},
            }

        return {"rows": n, **self.cached(("facets", stage), n, compute)}

    # -- rows ----------------------------------------------------------------------------
    @_one_connection
    def rows(
        self,
        stage: str,
        *,
        kept: bool | None = None,
        reason: str | None = None,
        capability: str | None = None,
        round: int | None = None,
        score: str | None = None,
        low: float | None = None,
        high: float | None = None,
        q: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> dict[str, Any]:
        """One page of a stage's rows under the filters, with the filtered count."""
        where, args = _filters(stage, kept, reason, capability, round, score, low, high, q)
        limit = max(1, min(int(limit), PAGE_MAX))
        offset = max(0, int(offset))
        # the count, then the page's positions, then the page's rows: the rows' text is read for the
        # page only (an OFFSET over whole rows would carry every skipped row's JSON through the sort)
        total = int(self.query(f"SELECT count(*) FROM records WHERE {where}", args)[0][0])
        window = self.query(
            f"SELECT seq FROM records WHERE {where} ORDER BY seq LIMIT {limit} OFFSET {offset}", args
        )
        seqs = [s for (s,) in window]
        page = (
            self.query(
                "SELECT key, kind, kept, reason, seq, data FROM records WHERE stage = ? "
                "AND seq IN (SELECT unnest(?)) ORDER BY seq",
                [stage, seqs],
            )
            if seqs
            else []
        )
        return {
            "stage": stage,
            "total": total,
            "offset": offset,
            "limit": limit,
            "rows": [summary(*row) for row in page],
        }

    @_one_connection
    def pairs(self, stage: str, *, offset: int = 0, limit: int = 10, **filters: Any) -> dict[str, Any]:
        """Preference rows with their whole record (prompt, ranked responses), a page at a time."""
        page = self.rows(stage, offset=offset, limit=limit, **filters)
        keys = [r["key"] for r in page["rows"]]
        full = {k: json.loads(d) for k, d in self.query(
            "SELECT key, data FROM records WHERE stage = ? AND key IN (SELECT unnest(?))", [stage, keys]
        )} if keys else {}  # fmt: skip
        page["rows"] = [{**r, "record": full.get(r["key"])} for r in page["rows"]]
        return page

    @_one_connection
    def record(self, stage: str, key: str) -> dict[str, Any]:
        """One row whole, with the stages its key went through (in run order)."""
        found = self.query(
            "SELECT kind, kept, reason, seq, grp, data FROM records WHERE stage = ? AND key = ?", [stage, key]
        )
        if not found:
            raise ViewError(f"no row {key!r} in stage {stage!r}")
        kind, kept, reason, seq, grp, data = found[0]
        trail = self.query(
            "SELECT r.stage, r.kept, r.reason FROM records r JOIN stages s USING (stage) WHERE r.key = ? "
            "ORDER BY s.position",
            [key],
        )
        return {
            "stage": stage,
            "key": key,
            "kind": kind,
            "kept": bool(kept),
            "reason": reason,
            "seq": seq,
            "group": grp,
            "record": json.loads(data),
            "stages": [{"stage": s, "kept": bool(k), "reason": r} for s, k, r in trail],
        }

    # -- scores --------------------------------------------------------------------------
    @_one_connection
    def scores(self, stage: str, bins: int = 20) -> dict[str, Any]:
        """Each score's statistics and histogram over a stage's rows (an evenly spaced sample of at
        most ``SAMPLE_ROWS`` of a bigger stage)."""
        n = self.stage_rows(stage)

        def compute() -> dict[str, Any]:
            step = max(1, math.ceil(n / SAMPLE_ROWS))
            sample = "" if step == 1 else f" AND seq % {step} = 0"
            values = (
                "SELECT j.key AS name, TRY_CAST(j.value AS DOUBLE) AS v, r.kept FROM "
                f"(SELECT data, kept FROM records WHERE stage = ?{sample}) r, json_each(r.data, '$.scores') j"
            )
            stats = self.query(
                f"WITH s AS ({values}) SELECT name, count(*), min(v), median(v), avg(v), max(v) FROM s "
                "WHERE v IS NOT NULL AND isfinite(v) GROUP BY name ORDER BY name",
                [stage],
            )
            out: dict[str, Any] = {}
            for name, count, lo, med, mean, hi in stats:
                out[name] = {
                    "stats": {"n": count, "min": lo, "median": med, "mean": mean, "max": hi},
                    "bins": [],
                }
            hist = self.query(
                f"WITH s AS ({values}), m AS (SELECT name, min(v) AS lo, max(v) AS hi FROM s "
                "WHERE v IS NOT NULL AND isfinite(v) GROUP BY name) "
                "SELECT s.name, CASE WHEN m.hi = m.lo THEN 0 "
                "ELSE least(floor((s.v - m.lo) / (m.hi - m.lo) * ?)::INTEGER, ? - 1) END AS b, "
                "count(*) FILTER (WHERE s.kept), count(*) FILTER (WHERE NOT s.kept) "
                "FROM s JOIN m USING (name) WHERE s.v IS NOT NULL AND isfinite(s.v) "
                "GROUP BY ALL ORDER BY ALL",
                [stage, bins, bins],
            )
            for name, b, k, r in hist:
                st = out[name]["stats"]
                width = (st["max"] - st["min"]) / bins if st["max"] > st["min"] else 0.0
                nb = bins if width else 1
                if not out[name]["bins"]:
                    out[name]["bins"] = [
                        {"lo": st["min"] + i * width, "hi": st["min"] + (i + 1) * width}
                        | {"kept": 0, "rejected": 0}
                        for i in range(nb)
                    ]
                out[name]["bins"][b]["kept"] = k
                out[name]["bins"][b]["rejected"] = r
            return {"stage": stage, "rows": n, "every": step, "scores": out}

        return self.cached(("scores", stage, bins), n, compute)


def _filters(
    stage: str,
    kept: bool | None,
    reason: str | None,
    capability: str | None,
    round: int | None,
    score: str | None,
    low: float | None,
    high: float | None,
    q: str | None,
) -> tuple[str, list[Any]]:
    where = ["stage = ?"]
    args: list[Any] = [stage]
    if kept is not None:
        where.append("kept = ?")
        args.append(kept)
    if reason:
        where.append("reason = ?")
        args.append(reason)
    if capability:
        where.append("json_extract_string(data, '$.provenance.capability') = ?")
        args.append(capability)
    if round is not None:
        where.append("TRY_CAST(json_extract(data, '$.provenance.round') AS INTEGER) = ?")
        args.append(int(round))
    if score:
        value = "TRY_CAST(json_extract(data, ?) AS DOUBLE)"
        path = "$.scores." + json.dumps(score)
        if low is None and high is None:
            where.append(f"{value} IS NOT NULL")
            args.append(path)
        if low is not None:
            where.append(f"{value} >= ?")
            args += [path, float(low)]
        if high is not None:
            where.append(f"{value} <= ?")
            args += [path, float(high)]
    elif low is not None or high is not None:
        raise ViewError("a score range needs a score name")
    if q:
        # the row's stored JSON text: the words as JSON writes them; LIKE's own characters escaped
        # where there are any (a pattern with ESCAPE takes DuckDB's slower matcher)
        text = json.dumps(q, ensure_ascii=False)[1:-1]
        if any(c in text for c in "\\%_"):
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("data ILIKE ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        else:
            where.append("data ILIKE ?")
            args.append(f"%{text}%")
    return " AND ".join(where), args


def _clip(text: Any, n: int = PREVIEW_CHARS) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _last(messages: list[dict[str, Any]], role: str) -> str:
    for m in reversed(messages or []):
        if m.get("role") == role and (m.get("content") or m.get("tool_calls")):
            if m.get("content"):
                return m["content"]
            calls = m.get("tool_calls") or []
            return "; ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in calls)
    return ""


_TEXT_FIELDS = ("problem", "query", "question", "prompt", "text", "summary", "code", "raw", "request")


def summary(key: str, kind: str, kept: Any, reason: str | None, seq: int, data: str) -> dict[str, Any]:
    """A row as the table shows it: a prompt and a response (or the item's main text) clipped."""
    rec = json.loads(data)
    prov = rec.get("provenance") or {}
    out: dict[str, Any] = {
        "key": key,
        "kind": kind,
        "kept": bool(kept),
        "reason": reason,
        "seq": seq,
        "capability": prov.get("capability"),
        "round": prov.get("round"),
        "scores": rec.get("scores") or {},
    }
    if kind == "sft" or "messages" in rec:
        out["prompt"] = _clip(_last(rec.get("messages"), "user"))
        out["response"] = _clip(_last(rec.get("messages"), "assistant"))
    elif kind == "preference":
        out["prompt"] = _clip(_last(rec.get("prompt"), "user"))
        responses = rec.get("responses") or []
        out["response"] = _clip(responses[0]["content"]) if responses else ""
        out["strength"] = rec.get("strength")
        out["gap"] = _gap(responses)
    elif kind == "step_labels":
        out["prompt"] = _clip(rec.get("prompt"))
        labels = rec.get("labels") or []
        out["response"] = f"{len(labels)} steps, {sum(1 for x in labels if x)} good"
    else:
        first = next((rec[f] for f in _TEXT_FIELDS if isinstance(rec.get(f), str) and rec[f].strip()), "")
        out["prompt"] = _clip(first)
        if kind == "code_candidate":
            attempts = rec.get("attempts") or []
            last = attempts[-1] if attempts else None
            outcome = (
                "not run" if last is None else "passed" if last.get("passed") else str(last.get("reason"))
            )
            out["response"] = f"{len(attempts)} run(s); last: {outcome}"
        elif kind == "math_solution":
            out["response"] = _clip(f"answer {rec.get('extracted')!r}, correct: {rec.get('correct')}")
        else:
            out["response"] = ""
    return out


def _gap(responses: list[dict[str, Any]]) -> float | None:
    scores = [r.get("score") for r in responses]
    if len(scores) >= 2 and scores[0] is not None and scores[-1] is not None:
        return round(float(scores[0]) - float(scores[-1]), 4)
    return None


# -- run directories and rounds -------------------------------------------------------------
def find_runs(root: Path, depth: int = 4) -> list[str]:
    """The run directories at or under ``root`` (a round directory holds several), as paths relative
    to it ("." for root itself), in name order; exported datasets are not runs."""
    root = Path(root)
    if (root / DB_NAME).exists():
        return ["."]
    found: list[str] = []

    def walk(d: Path, level: int) -> None:
        if level > depth:
            return
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            if (child / DB_NAME).exists():
                found.append(str(child.relative_to(root)))
            else:
                walk(child, level + 1)

    walk(root, 1)
    return found


def rounds(root: Path) -> dict[str, Any] | None:
    """The evaluation metrics of each round of a `synth round` directory ({"evaluation/check/metric":
    [by round]}), or None when ``root`` is not one."""
    numbers = round_numbers(root)
    if not numbers:
        return None
    series = metric_series(root, numbers)
    return {"rounds": numbers, "metrics": {"/".join(key): values for key, values in series.items()}}
