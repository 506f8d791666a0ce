"""The `synth view` web application: a Starlette app serving one page (``static/``, shipped with the
package: no asset comes from the internet) and a JSON API over a run directory (``synth.view.data``).

API (every route is a GET; ``run`` is a run's path relative to the served directory, "." for itself):
``/api/runs``, ``/api/funnel?run``, ``/api/meta?run``, ``/api/facets?run&stage``,
``/api/rows?run&stage&kept&reason&capability&round&score&min&max&q&offset&limit``,
``/api/pairs?run&stage&offset&limit``, ``/api/record?run&stage&key``, ``/api/scores?run&stage``,
``/api/rounds``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from synth.live import LiveReadError
from synth.store import RunBusy
from synth.view import data

STATIC = Path(__file__).parent / "static"


def _bool(value: str | None) -> bool | None:
    if value in (None, "", "all"):
        return None
    if value in ("kept", "true", "1"):
        return True
    if value in ("rejected", "false", "0"):
        return False
    raise data.ViewError(f"kept must be kept, rejected or all, not {value!r}")


def _number(value: str | None, name: str, cast: Any = float) -> Any:
    if value in (None, ""):
        return None
    try:
        return cast(value)
    except ValueError:
        raise data.ViewError(f"{name} must be a number, not {value!r}") from None


LOCAL_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def create_app(root: Path | str, host: str = "127.0.0.1") -> Starlette:
    """The app over ``root``. Requests must name a local host (or ``host``, the address it listens
    on) in their Host header: a web page elsewhere cannot read the run through DNS rebinding. Listening
    on every address (0.0.0.0, ::) accepts any name."""
    root = Path(root).resolve()
    readers: dict[str, data.RunReader] = {}

    def reader(request: Request) -> data.RunReader:
        run = request.query_params.get("run", ".")
        if run not in readers:
            if run not in data.find_runs(root):  # only the runs found under root: no path from outside
                raise data.ViewError(f"no run {run!r} under {root}")
            readers[run] = data.RunReader(root / run)
        return readers[run]

    def stage(request: Request) -> str:
        value = request.query_params.get("stage")
        if not value:
            raise data.ViewError("which stage? (stage=...)")
        return value

    def api(fn: Any) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            try:  # in a worker thread: a slow query does not hold the other requests
                return JSONResponse(await run_in_threadpool(fn, request))
            except data.ViewError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            except (LiveReadError, RunBusy) as e:
                return JSONResponse({"error": str(e), "live": True}, status_code=503)
            except FileNotFoundError as e:
                return JSONResponse({"error": str(e)}, status_code=404)

        return endpoint

    def runs(request: Request) -> dict[str, Any]:
        found = data.find_runs(root)
        return {
            "root": str(root),
            "runs": [{"run": r, "live": data.RunReader(root / r).writer() is not None} for r in found],
            "rounds": data.rounds(root) is not None,
        }

    def rows_args(request: Request) -> dict[str, Any]:
        p = request.query_params
        return {
            "kept": _bool(p.get("kept")),
            "reason": p.get("reason") or None,
            "capability": p.get("capability") or None,
            "round": _number(p.get("round"), "round", int),
            "score": p.get("score") or None,
            "low": _number(p.get("min"), "min"),
            "high": _number(p.get("max"), "max"),
            "q": p.get("q") or None,
            "offset": _number(p.get("offset"), "offset", int) or 0,
        }

    def rows(request: Request) -> dict[str, Any]:
        limit = _number(request.query_params.get("limit"), "limit", int) or 50
        return reader(request).rows(stage(request), limit=limit, **rows_args(request))

    def pairs(request: Request) -> dict[str, Any]:
        limit = _number(request.query_params.get("limit"), "limit", int) or 10
        return reader(request).pairs(stage(request), limit=limit, **rows_args(request))

    def record(request: Request) -> dict[str, Any]:
        key = request.query_params.get("key")
        if not key:
            raise data.ViewError("which row? (key=...)")
        return reader(request).record(stage(request), key)

    def rounds(request: Request) -> dict[str, Any]:
        return data.rounds(root) or {"rounds": [], "metrics": {}}

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    routes = [
        Route("/", index),
        Route("/api/runs", api(runs)),
        Route("/api/funnel", api(lambda r: reader(r).funnel())),
        Route("/api/meta", api(lambda r: reader(r).meta())),
        Route("/api/facets", api(lambda r: reader(r).facets(stage(r)))),
        Route("/api/rows", api(rows)),
        Route("/api/pairs", api(pairs)),
        Route("/api/record", api(record)),
        Route("/api/scores", api(lambda r: reader(r).scores(stage(r)))),
        Route("/api/rounds", api(rounds)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    hosts = ["*"] if host in ("0.0.0.0", "::", "") else [*LOCAL_NAMES, host]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])
