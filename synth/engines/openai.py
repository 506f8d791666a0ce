"""Client for any OpenAI-compatible server (``vllm serve``, TGI, llama.cpp server, OpenAI itself).

Every request is one ``POST {base_url}/chat/completions`` with ``n`` choices. Requests run on one
event loop in a background thread that lives as long as the engine, over one ``httpx.AsyncClient``;
one semaphore bounds the HTTP calls in flight to ``max_concurrency`` across *every* call of the engine
(a request sleeping in backoff does not hold a slot, a finished one frees its slot at once).
``generate`` may be called from several threads at once (``concurrent_calls = True``): the calls share
that one window, so a caller that overlaps batches keeps it full while one batch waits for a slow
retry.

Reliability rules:

* 429, 408, 409, 425, 5xx, timeouts, connection errors and malformed 200 answers (a body that is not
  JSON, no ``choices``, a choice without content and without tool calls) are retried with exponential
  backoff and jitter; a ``Retry-After`` header (seconds or an HTTP date) is honoured. A malformed
  answer is never returned as a completion, so it is never cached. Content sent as a list of parts
  (``[{"type": "text", "text": ...}]``) is read as its text.
* ``timeout_s`` bounds each *attempt* as a whole (connect, send, wait, read every byte): a server
  trickling its answer a byte at a time is cut at the deadline and retried like any timeout.
* Any other 4xx is permanent: ``EngineError`` with the request index, its id and the server's message.
* Results are placed by request index, so none is lost, duplicated or misplaced. A server that
  returns fewer choices than asked is asked again for the missing ones only (with ``seed + k`` when
  a seed is set, so a seeded server does not repeat the choices it already gave).
* When a request exhausts its retries the whole batch fails with ``EngineError`` naming the index and
  the request id: there are never partial, silent results. Retry warnings name them too.

Several servers (``base_url`` a comma-separated list, or a list): each attempt goes to the server with
the fewest requests in flight from this engine (ties in turn), so requests spread over all of them. A
server that cannot be reached (refused, reset, dropped mid-answer) is left out for ``failover_s``
seconds and the request is sent at once to another one (no backoff while another is up); 429/5xx and
timeouts are retried with backoff as above, on the least-loaded server. The window is
``max_concurrency`` times the number of servers (the servers that are up share it). ``/models`` and
``/tokenize`` are asked of the first server.

Token counts: ``prompt_tokens`` comes from ``usage.prompt_tokens``. The OpenAI API reports only the
*total* ``usage.completion_tokens`` over all ``n`` choices; it is split across the choices in
proportion to their text length (largest-remainder rounding, so the per-choice counts sum to the
server's total; exact for ``n == 1``). A per-choice ``completion_tokens`` field, which some servers
add, wins over the split. Without ``usage`` the counts are 0.

Structured output (``SamplingParams.json_schema`` / ``regex``): a JSON schema goes as
``response_format: {"type": "json_schema", ...}``, a regex as vLLM's ``structured_outputs: {"regex"}``.
Replies are checked here as well (a server may ignore the format): the valid part of a reply is kept, an
invalid reply is asked for again up to ``structured_retries`` times, then kept with
``extra["structured_error"]`` (``synth.engines.structured``).

Judge scores (``choice_logprobs``): one greedy request with ``logprobs: true, top_logprobs: N``; the
distribution over whole choices is read where the reply writes the prefix ("Score:"), see
``synth.engines.choices.path_choice_logprobs``. A server that gives no log-probs (or refuses the
parameters) is remembered, and the judge falls back to the number the reply wrote.

Prompt budget: ``context_length`` is the ``max_context`` argument, else the ``max_model_len`` the
server lists under ``/v1/models`` (vLLM does), else unknown; ``count_prompt_tokens`` bounds a prompt by
its bytes and asks the server's ``/tokenize`` (vLLM) only for one the bounds cannot decide.

The API key (argument, else ``OPENAI_API_KEY``) goes only into the ``Authorization`` header; it is
never logged, shown in ``repr`` or put into an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import random
import threading
import time
import weakref
from typing import Any

import httpx

from synth.engines.base import (
    Completion,
    EngineError,
    Request,
    SamplingParams,
    TokenCount,
    truncate_at_stop,
)
from synth.engines.choices import path_choice_logprobs
from synth.engines.structured import constraint, is_valid, mark

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
RETRY_AFTER_MAX_S = 300.0  # a server asking for more than this is treated as asking for this
LENGTH_REASONS = frozenset({"length", "max_tokens", "model_length"})


class _Retryable(Exception):
    """One failed attempt that may succeed when tried again (``unreachable``: the server could not
    be reached or dropped the connection; another server may answer at once)."""

    def __init__(self, message: str, retry_after: float | None = None, unreachable: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.unreachable = unreachable


class _Servers:
    """The engine's servers: requests in flight on each, and until when each is left out (after a
    connection error). Used only on the engine's event loop: no lock."""

    def __init__(self, urls: list[str], failover_s: float) -> None:
        self.urls = urls
        self.failover_s = failover_s
        self.load = [0] * len(urls)
        self.down_until = [0.0] * len(urls)
        self._turn = 0

    def pick(self) -> int:
        """The reachable server with the fewest requests in flight (ties in turn); when every one
        is left out, the one that comes back first."""
        now = time.monotonic()
        n = len(self.urls)
        up = [i for i in range(n) if self.down_until[i] <= now]
        self._turn += 1
        if not up:
            return min(range(n), key=lambda i: self.down_until[i])
        return min(up, key=lambda i: (self.load[i], (i - self._turn) % n))

    def unreachable(self, i: int) -> bool:
        """Leave server ``i`` out for a while; True when another server is up to take the retry."""
        now = time.monotonic()
        self.down_until[i] = now + self.failover_s
        return any(self.down_until[j] <= now for j in range(len(self.urls)) if j != i)


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


def _choice_text(choice: dict[str, Any]) -> str | None:
    """A choice's text; None when it has none (no content and no tool calls: a malformed answer)."""
    msg = choice.get("message")
    if not isinstance(msg, dict):
        text = choice.get("text")  # a completions-style choice
        return text if isinstance(text, str) else None
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type", "text") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(texts)
        return None
    if content is None:
        if isinstance(msg.get("refusal"), str):
            return msg["refusal"]  # the model's own words, sent in their own field
        if msg.get("tool_calls") or msg.get("function_call"):
            return ""  # a tool call answers without text
    return None


def _path_tokens(choice: dict[str, Any]) -> list[tuple[str, float, dict[str, float]]] | None:
    """A choice's log-probs as (token, logprob, {alternative: logprob}) per position, from the chat
    shape (``logprobs.content``) or the legacy completions shape; None when it has none."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    out = []
    content = lp.get("content")
    try:
        if isinstance(content, list):
            for e in content:
                alts = {a["token"]: float(a["logprob"]) for a in e.get("top_logprobs") or []}
                out.append((str(e["token"]), float(e["logprob"]), alts))
        elif isinstance(lp.get("tokens"), list):
            tops = lp.get("top_logprobs") or [{}] * len(lp["tokens"])
            for t, tl, top in zip(lp["tokens"], lp["token_logprobs"], tops, strict=False):
                out.append((str(t), float(tl), {str(k): float(v) for k, v in (top or {}).items()}))
        else:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return out or None


class _Loop:
    """One event loop in a daemon thread with the engine's one HTTP client and concurrency window,
    shared by every call (from any thread). Closed when the engine is collected or at exit."""

    def __init__(self, max_concurrency: int, client_kwargs: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.sem: asyncio.Semaphore | None = None
        self.client: httpx.AsyncClient | None = None
        self.max_concurrency = max_concurrency
        self._client_kwargs = client_kwargs  # no reference to the engine: it can be collected
        self.thread = threading.Thread(target=self.loop.run_forever, name="openai-engine", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        """Run ``coro`` on the loop; block the calling thread until it is done."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("OpenAIEngine.generate called from its own event loop; await agenerate")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # the caller gave up (KeyboardInterrupt...): do not leave it running
            raise

    async def shared(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        if self.client is None:
            self.client = httpx.AsyncClient(**self._client_kwargs)
            self.sem = asyncio.Semaphore(self.max_concurrency)
        return self.client, self.sem  # type: ignore[return-value]

    def close(self) -> None:
        if self.loop.is_closed():
            return
        own_thread = threading.current_thread() is self.thread
        if self.client is not None and self.loop.is_running() and not own_thread:
            with contextlib.suppress(Exception):  # closing on the way out: nothing to report to
                asyncio.run_coroutine_threadsafe(self.client.aclose(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not own_thread:
            self.thread.join(timeout=5)
            if not self.thread.is_alive():
                self.loop.close()


UNKNOWN_MAX_TOKEN_BYTES = 256  # no tokenizer is known to have a longer token
TEMPLATE_TOKENS = 64  # a chat template's own tokens: per message, and once (a default system prompt)


class OpenAIEngine:
    name = "openai"
    concurrent_calls = True  # generate may be called from several threads; they share one window

    def __init__(
        self,
        model: str,
        base_url: str | list[str],
        api_key: str | None = None,
        max_concurrency: int = 16,
        max_retries: int = 6,
        timeout_s: float = 60,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20,
        max_context: int | None = None,
        top_logprobs: int = 20,
        choice_max_tokens: int = 32,
        structured_retries: int = 3,
        failover_s: float = 10.0,
    ) -> None:
        if not model:
            raise EngineError("the openai engine needs a model name (the name the server serves)")
        urls = [u.strip() for u in base_url.split(",")] if isinstance(base_url, str) else list(base_url or [])
        urls = [u for u in urls if u]
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if not urls or bad:
            raise EngineError(
                f"base_url must be an http(s) URL (or several, comma-separated), got {base_url!r}"
            )
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_context is not None and max_context < 1:
            raise ValueError("max_context must be >= 1")
        self.model = model
        self.base_urls = [u.rstrip("/") for u in urls]
        self.base_url = self.base_urls[0]  # /models and /tokenize are asked of the first server
        self._servers = _Servers(self.base_urls, float(failover_s))
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = float(timeout_s)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.top_logprobs = int(top_logprobs)
        self.choice_max_tokens = int(choice_max_tokens)
        self.structured_retries = int(structured_retries)
        self._rng = random.Random()
        self._max_context = max_context
        self._context_probed = max_context is not None
        self._logprobs_ok: bool | None = None  # learnt from the first answer to a log-prob request
        self._tokenize_ok: bool | None = None
        self._loop_lock = threading.Lock()
        self._loop_obj: _Loop | None = None

    def __repr__(self) -> str:  # no api key here, ever
        return (
            f"OpenAIEngine(model={self.model!r}, base_url={','.join(self.base_urls)!r}, "
            f"max_concurrency={self.max_concurrency}, max_retries={self.max_retries})"
        )

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    @property
    def window(self) -> int:
        """HTTP calls in flight at most: ``max_concurrency`` per server."""
        return self.max_concurrency * len(self.base_urls)

    # -- the shared loop ---------------------------------------------------------------------
    @property
    def _loop(self) -> _Loop:
        with self._loop_lock:
            if self._loop_obj is None:
                self._loop_obj = _Loop(self.window, self._client_kwargs())
                weakref.finalize(self, self._loop_obj.close)
            return self._loop_obj

    def _client_kwargs(self) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        limits = httpx.Limits(max_connections=self.window, max_keepalive_connections=self.window)
        return {"headers": headers, "timeout": httpx.Timeout(self.timeout_s), "limits": limits}

    def close(self) -> None:
        """Close the HTTP client and stop the engine's loop (a later call starts them again)."""
        with self._loop_lock:
            loop, self._loop_obj = self._loop_obj, None
        if loop is not None:
            loop.close()

    # -- the batch interface -------------------------------------------------------------
    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        """Sync entry point: from plain code, from inside a running event loop, from several
        threads at once (all calls share the engine's one concurrency window)."""
        if not requests:
            return []
        return self._loop.run(self._generate(requests, sampling))

    async def agenerate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        """``generate`` for async callers: runs on the engine's loop, awaited from the caller's."""
        if not requests:
            return []
        loop = self._loop
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._generate(requests, sampling), loop.loop)
        )

    async def _generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        results = await self._each(
            requests, lambda i, client, sem: self._one(client, sem, i, requests[i], sampling)
        )
        missing = [i for i, r in enumerate(results) if r is None or len(r) != sampling.n]
        if missing:  # cannot happen; guard against silently partial results all the same
            raise EngineError(f"openai engine: no complete result for request(s) {missing[:10]}")
        return results

    async def _each(self, requests: list[Request], job: Any) -> list[Any]:
        """``job(i, client, sem)`` for every request index, by a bounded pool of workers."""
        if not requests:
            return []
        client, sem = await self._loop.shared()
        results: list[Any] = [None] * len(requests)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(requests)):
            queue.put_nowait(i)

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results[i] = await job(i, client, sem)

        # workers, not one task per request: a million-request batch stays small in memory
        n_workers = min(len(requests), self.window * 4)
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(n_workers):
                    tg.create_task(worker())
        except BaseExceptionGroup as eg:
            raise _first_error(eg) from None
        return results

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
        retried = 0  # structured output: rounds that asked again for replies that failed the check
        while len(got) < sampling.n:
            want = sampling.n - len(got)
            seed = None if sampling.seed is None else sampling.seed + len(got) + 1_000_003 * retried
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
            if request.continues:  # continue the final assistant message (vLLM's server honours it)
                body.update(continue_final_message=True, add_generation_prompt=False)
            body.update(structured_body(sampling))
            data = await self._post(client, sem, index, request, body)
            comps = self._parse(data, sampling)[:want]
            if not comps:  # _attempt retries an answer without choices; never loop on one
                raise EngineError(f"openai engine: {_label(index, request)}: an answer without choices")
            if len(comps) < want:
                log.debug("%s: asked for %d choices, got %d", _label(index, request), want, len(comps))
            if constraint(sampling) is not None:  # checked here too: a server may ignore the format
                for c in comps:
                    mark(c, sampling, lenient=True)
                    c.extra["structured_attempts"] = retried + 1
                if retried < self.structured_retries and not all(is_valid(c) for c in comps):
                    retried += 1  # keep the valid ones, ask again for the rest
                    comps = [c for c in comps if is_valid(c)]
            got.extend(comps)
        return got

    async def _post(
        self,
        client: httpx.AsyncClient,
        sem: asyncio.Semaphore,
        index: int,
        request: Request,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        last = ""
        label = _label(index, request)
        url = self.url
        for attempt in range(self.max_retries + 1):
            server = 0
            try:
                async with sem:  # the server is picked as the request goes out: loads are real
                    server = self._servers.pick()
                    url = f"{self.base_urls[server]}/chat/completions"
                    self._servers.load[server] += 1
                    try:
                        async with asyncio.timeout(self.timeout_s):  # the whole attempt, every byte
                            return await self._attempt(client, body, url)
                    except TimeoutError:
                        raise _Retryable(f"no complete answer within {self.timeout_s:g}s") from None
                    finally:
                        self._servers.load[server] -= 1
            except _Retryable as e:
                last = str(e)
                failover = e.unreachable and self._servers.unreachable(server)
                if attempt == self.max_retries:
                    break
                delay = 0.0 if failover else self._backoff(attempt, e.retry_after)
                log.warning(
                    "openai engine: %s attempt %d/%d failed (%s); retrying in %.2fs",
                    label,
                    attempt + 1,
                    self.max_retries + 1,
                    last,
                    delay,
                )
                await asyncio.sleep(delay)
            except _Permanent as e:
                raise EngineError(f"openai engine: {label}: {e} ({url})") from None
        raise EngineError(
            f"openai engine: {label} failed after {self.max_retries + 1} attempts; last error: {last} ({url})"
        )

    async def _attempt(self, client: httpx.AsyncClient, body: dict[str, Any], url: str) -> dict[str, Any]:
        try:
            resp = await client.post(url, json=body)
        except httpx.ConnectTimeout as e:  # nobody answers there: another server may
            raise _Retryable(
                f"timeout after {self.timeout_s:g}s ({type(e).__name__})", unreachable=True
            ) from None
        except httpx.TimeoutException as e:
            raise _Retryable(f"timeout after {self.timeout_s:g}s ({type(e).__name__})") from None
        except httpx.TransportError as e:  # refused, reset, dropped mid-answer, protocol errors
            raise _Retryable(f"{type(e).__name__}: {e or 'connection error'}", unreachable=True) from None
        status = resp.status_code
        if status == 200:
            try:
                data = resp.json()
            except ValueError:
                raise _Retryable("malformed JSON in a 200 answer") from None
            _check_answer(data)
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
        raw_texts = [_choice_text(c) or "" for c in choices]
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

    # -- judge scores ------------------------------------------------------------------------------
    def choice_logprobs(
        self, requests: list[Request], prefix: str, choices: list[str]
    ) -> list[dict[str, float] | None]:
        """log P(each choice, whole) where the greedy reply writes ``prefix``, from the server's
        ``top_logprobs`` (``synth.engines.choices.path_choice_logprobs``); None for a request whose
        reply has no ``prefix`` within ``choice_max_tokens`` tokens or no log-probs."""
        if not requests or self._logprobs_ok is False:
            return [None] * len(requests)
        return self._loop.run(self._choice_logprobs(requests, prefix, list(choices)))

    async def _choice_logprobs(
        self, requests: list[Request], prefix: str, choices: list[str]
    ) -> list[dict[str, float] | None]:
        async def job(i: int, client: httpx.AsyncClient, sem: asyncio.Semaphore):
            if self._logprobs_ok is False:
                return None
            body = {
                "model": self.model,
                "messages": [dict(m) for m in requests[i].messages],
                "n": 1,
                "temperature": 0.0,
                "max_tokens": self.choice_max_tokens,
                "logprobs": True,
                "top_logprobs": self.top_logprobs,
            }
            try:
                data = await self._post(client, sem, i, requests[i], body)
            except EngineError as e:
                if self._logprobs_ok is None and " HTTP 4" in str(e):
                    log.warning(
                        "openai engine: the server refuses log-probs (%s); judges read the written score", e
                    )
                    self._logprobs_ok = False
                    return None
                raise
            tokens = _path_tokens(data["choices"][0])
            if tokens is None:
                if self._logprobs_ok is None:
                    log.warning("openai engine: the server gives no log-probs; judges read the written score")
                    self._logprobs_ok = False
                return None
            self._logprobs_ok = True
            at = "".join(t for t, _, _ in tokens).find(prefix)
            return None if at < 0 else path_choice_logprobs(tokens, at + len(prefix), choices)

        if self._logprobs_ok is None:  # the first answer says whether the server has log-probs at all
            first = await self._each(requests[:1], job)
            rest = await self._each(requests[1:], lambda i, client, sem: job(i + 1, client, sem))
            return first + rest
        return await self._each(requests, job)

    # -- prompt budget -----------------------------------------------------------------------------
    @property
    def context_length(self) -> int | None:
        """``max_context``, else the ``max_model_len`` the server lists for the model, else None."""
        if not self._context_probed:
            self._context_probed = True
            try:
                self._max_context = self._loop.run(self._probe_context())
            except Exception as e:  # noqa: BLE001 - an optional probe: unknown is an answer
                log.debug("openai engine: no context length from %s/models: %s", self.base_url, e)
        return self._max_context

    async def _probe_context(self) -> int | None:
        client, _ = await self._loop.shared()
        async with asyncio.timeout(min(self.timeout_s, 30)):
            resp = await client.get(f"{self.base_url}/models")
        if resp.status_code != 200:
            return None
        for m in resp.json().get("data") or []:
            if isinstance(m, dict) and m.get("id") == self.model:
                for key in ("max_model_len", "context_length", "max_context_length"):
                    if isinstance(m.get(key), int) and m[key] > 0:
                        return m[key]
        return None

    def count_prompt_tokens(self, request: Request, limit: int) -> TokenCount | None:
        """Bounds from the prompt's bytes (a token stands for at least one byte and, in every known
        tokenizer, at most ``UNKNOWN_MAX_TOKEN_BYTES``; the template adds at most ``TEMPLATE_TOKENS``
        per message), else the server's ``/tokenize`` (vLLM); None when neither decides."""
        nbytes = sum(
            len(str(m.get("content") or "").encode("utf-8", "surrogatepass")) for m in request.messages
        )
        lower = -(-nbytes // UNKNOWN_MAX_TOKEN_BYTES)
        if lower > limit:
            return TokenCount(lower, exact=False)
        upper = nbytes + TEMPLATE_TOKENS * (len(request.messages) + 1)
        if upper <= limit:
            return TokenCount(upper, exact=False)
        if self._tokenize_ok is False:
            return None
        try:
            n = self._loop.run(self._tokenize(request))
        except Exception as e:  # noqa: BLE001 - optional: the server decides then
            log.debug("openai engine: /tokenize failed: %s", e)
            n = None
        if n is None:
            self._tokenize_ok = False
            return None
        self._tokenize_ok = True
        return TokenCount(n)

    async def _tokenize(self, request: Request) -> int | None:
        client, sem = await self._loop.shared()
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        body = {"model": self.model, "messages": [dict(m) for m in request.messages]}
        async with sem, asyncio.timeout(self.timeout_s):
            resp = await client.post(f"{root}/tokenize", json=body)
        if resp.status_code != 200:
            return None
        count = resp.json().get("count")
        return count if isinstance(count, int) else None


def structured_body(sampling: SamplingParams) -> dict[str, Any]:
    """The request fields that constrain the reply: the OpenAI API's ``response_format`` for a JSON
    schema; vLLM's ``structured_outputs`` extension for a regex (the OpenAI API has none)."""
    c = constraint(sampling)
    if c is None:
        return {}
    kind, spec = c
    if kind == "json":
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": spec}}}
    return {"structured_outputs": {"regex": spec}}


def _label(index: int, request: Request) -> str:
    """How messages name a request: its index in the batch and, when it has one, its id."""
    return f"request {index} (id {request.id!r})" if request.id else f"request {index}"


def _check_answer(data: Any) -> None:
    """A 200 answer the engine can use, else ``_Retryable``: the answer is never returned."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise _Retryable("a 200 answer without a 'choices' list")
    if not data["choices"]:
        raise _Retryable("a 200 answer with no choices")
    for c in data["choices"]:
        if not isinstance(c, dict):
            raise _Retryable("a 200 answer with a malformed choice")
        if _choice_text(c) is None:
            raise _Retryable(f"a 200 answer without content (choice {c.get('index', '?')})")


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
