"""Client for any OpenAI-compatible server (``vllm serve``, TGI, llama.cpp server, OpenAI itself).

Every request is one ``POST {base_url}/chat/completions`` with ``n`` choices. Requests run
concurrently on one ``httpx.AsyncClient``; a semaphore bounds the HTTP calls in flight to
``max_concurrency`` (a request sleeping in backoff does not hold a slot).

Reliability rules:

* 429, 408, 409, 425, 5xx, timeouts, connection errors and malformed 200 answers are retried with
  exponential backoff and jitter; a ``Retry-After`` header (seconds or an HTTP date) is honoured.
* Any other 4xx is permanent: ``EngineError`` with the request index and the server's message.
* Results are placed by request index, so none is lost, duplicated or misplaced. A server that
  returns fewer choices than asked is asked again for the missing ones only (with ``seed + k`` when
  a seed is set, so a seeded server does not repeat the choices it already gave).
* When a request exhausts its retries the whole batch fails with ``EngineError`` naming the index:
  there are never partial, silent results.

Token counts: ``prompt_tokens`` comes from ``usage.prompt_tokens``. The OpenAI API reports only the
*total* ``usage.completion_tokens`` over all ``n`` choices; it is split across the choices in
proportion to their text length (largest-remainder rounding, so the per-choice counts sum to the
server's total; exact for ``n == 1``). A per-choice ``completion_tokens`` field, which some servers
add, wins over the split. Without ``usage`` the counts are 0.

The API key (argument, else ``OPENAI_API_KEY``) goes only into the ``Authorization`` header; it is
never logged, shown in ``repr`` or put into an error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import threading
import time
from typing import Any

import httpx

from synth.engines.base import Completion, EngineError, Request, SamplingParams, truncate_at_stop

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
RETRY_AFTER_MAX_S = 300.0  # a server asking for more than this is treated as asking for this
LENGTH_REASONS = frozenset({"length", "max_tokens", "model_length"})


class _Retryable(Exception):
    """One failed attempt that may succeed when tried again."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Permanent(Exception):
    """A failed attempt that will fail the same way again (4xx other than 408/409/425/429)."""


def map_finish_reason(reason: Any) -> str:
    """Server finish reasons -> ``"stop"`` | ``"length"`` (eos, stop strings, tools... -> stop)."""
    return "length" if isinstance(reason, str) and reason.lower() in LENGTH_REASONS else "stop"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds (floats accepted) or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def split_tokens(total: int, texts: list[str]) -> list[int]:
    """Split ``total`` over choices in proportion to text length; the parts sum to ``total``."""
    k = len(texts)
    if k == 0:
        return []
    total = max(int(total), 0)
    weights = [len(t) for t in texts]
    if sum(weights) == 0:
        weights = [1] * k
    wsum = sum(weights)
    exact = [total * w / wsum for w in weights]
    parts = [int(x) for x in exact]
    order = sorted(range(k), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _server_message(resp: httpx.Response) -> str:
    """The error text a server put in its body (OpenAI, vLLM and FastAPI shapes)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    msg: Any = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
        elif isinstance(err, str):
            msg = err
        msg = msg or body.get("message") or body.get("detail")
    if not msg:
        msg = resp.text or resp.reason_phrase
    msg = str(msg).strip()
    return msg if len(msg) <= 500 else msg[:500] + "..."


class OpenAIEngine:
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str | None = None,
        max_concurrency: int = 16,
        max_retries: int = 6,
        timeout_s: float = 60,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20,
    ) -> None:
        if not model:
            raise EngineError("the openai engine needs a model name (the name the server serves)")
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise EngineError(f"base_url must be an http(s) URL, got {base_url!r}")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = float(timeout_s)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self._rng = random.Random()

    def __repr__(self) -> str:  # no api key here, ever
        return (
            f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r}, "
            f"max_concurrency={self.max_concurrency}, max_retries={self.max_retries})"
        )

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    # -- the batch interface -------------------------------------------------------------
    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        """Sync entry point; works from plain code and from inside a running event loop."""
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests, sampling))
        # called from async code: asyncio.run cannot nest, so run our own loop in a thread
        box: dict[str, Any] = {}

        def runner() -> None:
            try:
                box["value"] = asyncio.run(self.agenerate(requests, sampling))
            except BaseException as e:  # re-raised in the caller's thread
                box["error"] = e

        t = threading.Thread(target=runner, name="openai-engine", daemon=True)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    async def agenerate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        if not requests:
            return []
        results: list[list[Completion] | None] = [None] * len(requests)
        sem = asyncio.Semaphore(self.max_concurrency)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(requests)):
            queue.put_nowait(i)
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        limits = httpx.Limits(
            max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
        )
        # workers, not one task per request: a million-request batch stays small in memory
        n_workers = min(len(requests), self.max_concurrency * 4)
        async with httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(self.timeout_s), limits=limits
        ) as client:

            async def worker() -> None:
                while True:
                    try:
                        i = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    results[i] = await self._one(client, sem, i, requests[i], sampling)

            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(n_workers):
                        tg.create_task(worker())
            except BaseExceptionGroup as eg:
                raise _first_error(eg) from None
        missing = [i for i, r in enumerate(results) if r is None or len(r) != sampling.n]
        if missing:  # cannot happen; guard against silently partial results all the same
            raise EngineError(f"openai engine: no complete result for request(s) {missing[:10]}")
        return results  # type: ignore[return-value]

    # -- one logical request: n completions, topped up if the server gives fewer -----------------
    async def _one(
        self,
        client: httpx.AsyncClient,
        sem: asyncio.Semaphore,
        index: int,
        request: Request,
        sampling: SamplingParams,
    ) -> list[Completion]:
        got: list[Completion] = []
        empty_rounds = 0
        while len(got) < sampling.n:
            want = sampling.n - len(got)
            seed = None if sampling.seed is None else sampling.seed + len(got)
            body: dict[str, Any] = {
                "model": self.model,
                "messages": [dict(m) for m in request.messages],
                "n": want,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "max_tokens": sampling.max_tokens,
            }
            if sampling.stop:
                body["stop"] = list(sampling.stop)
            if seed is not None:
                body["seed"] = seed
            data = await self._post(client, sem, index, body)
            comps = self._parse(data, sampling)[:want]
            if not comps:
                # a 200 with no choices: count it against the retry budget instead of looping
                empty_rounds += 1
                if empty_rounds > self.max_retries:
                    raise EngineError(
                        f"openai engine: request {index}: the server returned no choices "
                        f"{empty_rounds} times ({len(got)}/{sampling.n} completions)"
                    )
                await asyncio.sleep(self._backoff(empty_rounds - 1))
                continue
            if len(comps) < want:
                log.debug("request %d: asked for %d choices, got %d", index, want, len(comps))
            got.extend(comps)
        return got

    async def _post(
        self, client: httpx.AsyncClient, sem: asyncio.Semaphore, index: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                async with sem:
                    return await self._attempt(client, body)
            except _Retryable as e:
                last = str(e)
                if attempt == self.max_retries:
                    break
                delay = self._backoff(attempt, e.retry_after)
                log.warning(
                    "openai engine: request %d attempt %d/%d failed (%s); retrying in %.2fs",
                    index,
                    attempt + 1,
                    self.max_retries + 1,
                    last,
                    delay,
                )
                await asyncio.sleep(delay)
            except _Permanent as e:
                raise EngineError(f"openai engine: request {index}: {e} ({self.url})") from None
        raise EngineError(
            f"openai engine: request {index} failed after {self.max_retries + 1} attempts; "
            f"last error: {last} ({self.url})"
        )

    async def _attempt(self, client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = await client.post(self.url, json=body)
        except httpx.TimeoutException as e:
            raise _Retryable(f"timeout after {self.timeout_s:g}s ({type(e).__name__})") from None
        except httpx.TransportError as e:  # refused, reset, dropped mid-answer, protocol errors
            raise _Retryable(f"{type(e).__name__}: {e or 'connection error'}") from None
        status = resp.status_code
        if status == 200:
            try:
                data = resp.json()
            except ValueError:
                raise _Retryable("malformed JSON in a 200 answer") from None
            if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
                raise _Retryable("a 200 answer without a 'choices' list")
            return data
        msg = f"HTTP {status}: {_server_message(resp)}"
        if status in RETRYABLE_STATUS or status >= 500:
            raise _Retryable(msg, parse_retry_after(resp.headers.get("retry-after")))
        raise _Permanent(msg)

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            # honour the server; a little jitter so a 429 storm does not come back in lockstep
            return retry_after + self._rng.uniform(0, min(1.0, 0.1 * retry_after))
        cap = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        return cap / 2 + self._rng.uniform(0, cap / 2)  # "equal jitter"

    def _parse(self, data: dict[str, Any], sampling: SamplingParams) -> list[Completion]:
        choices = [c for c in data.get("choices") or [] if isinstance(c, dict)]
        choices.sort(key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        raw_texts = []
        for c in choices:
            msg = c.get("message")
            text = msg.get("content") if isinstance(msg, dict) else c.get("text")
            raw_texts.append(text if isinstance(text, str) else "")
        per_choice = [c.get("completion_tokens") for c in choices]
        if all(isinstance(x, int) for x in per_choice):
            counts = [int(x) for x in per_choice]
        else:
            counts = split_tokens(int(usage.get("completion_tokens") or 0), raw_texts)
        out = []
        for c, text, ntok in zip(choices, raw_texts, counts, strict=True):
            text, hit = truncate_at_stop(text, sampling.stop)  # safety net: servers differ
            reason = "stop" if hit else map_finish_reason(c.get("finish_reason"))
            out.append(Completion(text, prompt_tokens, ntok, reason))
        return out


def _first_error(eg: BaseExceptionGroup) -> BaseException:
    """The error to raise from a failed TaskGroup: an EngineError first, else whatever it was."""
    flat: list[BaseException] = []
    stack: list[BaseException] = [eg]
    while stack:
        e = stack.pop(0)
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        else:
            flat.append(e)
    for e in flat:
        if isinstance(e, EngineError):
            return e
    return flat[0] if flat else eg
