"""A loopback OpenAI-compatible server for tests: deterministic answers, fault injection, counters.

Usage::

    with OpenAIServer() as srv:                   # binds 127.0.0.1 on an ephemeral port
        eng = OpenAIEngine("fake", srv.base_url)  # base_url = http://127.0.0.1:PORT/v1
        ...
        assert srv.count("prompt-3") == 1         # HTTP requests received for that prompt

Answers (without ``engine=``) are a pure function of the last user message, the seed and the
choice index, see :func:`expected_tokens`; "tokens" are whitespace-separated words. A reply is
cut at ``max_tokens`` words (``finish_reason="length"``) and at stop strings (unless
``ignore_stop``). ``usage`` carries word counts: the prompt's words over all messages, and the
*total* completion words over all choices, as real servers do.

Faults are chosen per (prompt, attempt number) so a test does not depend on thread timing:

* ``schedule={"p1": [Fault.error(503), None]}``: attempt 1 of "p1" gets a 503, attempt 2 is
  served; attempts past the end of the list are served normally (repeat the list to make it long).
* ``faults=callable(prompt, attempt) -> Fault | None`` for anything else.
* ``random_faults=[(0.3, Fault.rate_limited(0.01))]``: each attempt draws from a seeded RNG keyed on
  (``fault_seed``, prompt, attempt); at most ``max_faults_per_prompt`` random faults per prompt.

``engine=`` wraps any object with the Engine interface (``generate(requests, sampling)``) so a real
model can be served over HTTP; calls into it are serialized.

Malformed and slow answers, as faults: ``Fault.no_content()`` (a 200 whose choices lack
``message.content``, or carry ``null``), ``Fault.garbage()`` (a 200 whose body is not JSON),
``Fault.parts()`` (content sent as a list of text parts: valid, not a fault),
``Fault.trickle(s)`` (headers at once, then the body one byte every ``s`` seconds).

Log-probs (``"logprobs": true, "top_logprobs": k`` in the body), like a real server:

* with ``engine=`` a real ``HFEngine``: the greedy reply's own tokens, each with the model's top-k
  alternatives (teacher-forced, exact);
* ``token_logprobs=callable(prompt) -> [(token, logprob, {alternative: logprob}), ...]``: a scripted
  reply (the tokens joined) with a deterministic distribution;
* otherwise the answer has no ``logprobs``, as a server that does not support them.

``max_model_len=`` is listed for the model under ``/v1/models`` (as vLLM does); ``tokenize=True``
serves vLLM's ``POST /tokenize`` (``count``: the prompt's words, as ``usage`` counts them).

Structured output: ``response_format`` is checked like the OpenAI API does (``{"type": "text"}``,
``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {"name", "schema"}}`` with a
valid JSON schema; anything else is a 400) and, with ``json_schema``, honoured: with ``engine=`` the
schema goes to the engine (``SamplingParams.json_schema``), otherwise each choice is a JSON value
built from the schema (:func:`schema_instance`, seeded by prompt and choice). vLLM's extension
``structured_outputs: {"regex": ...}`` goes to a wrapped engine as ``SamplingParams.regex``.
``ignore_format=True`` plays a server that accepts the fields but ignores them (plain answers).
``formats`` lists the ``response_format`` of every request received.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from synth.engines.base import Request, SamplingParams, truncate_at_stop


@dataclass(frozen=True)
class Fault:
    status: int | None = None  # answer with this HTTP error status
    retry_after: float | str | None = None  # Retry-After header sent with the error
    message: str = "injected fault"
    delay_s: float = 0.0  # wait this long before answering (past the client timeout => timeout)
    drop: bool = False  # close the connection without answering
    max_choices: int | None = None  # answer normally but with at most this many choices
    strip_content: str | None = None  # "missing" | "null": a 200 whose choices have no content
    non_json: bool = False  # a 200 whose body is not JSON
    parts: bool = False  # content as a list of text parts (valid: not a fault)
    trickle_s: float = 0.0  # send the body one byte every trickle_s seconds

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = 0.01) -> Fault:
        return cls(status=429, retry_after=retry_after, message="rate limit exceeded")

    @classmethod
    def error(cls, status: int = 500, message: str = "injected server error") -> Fault:
        return cls(status=status, message=message)

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        return cls(delay_s=delay_s)

    @classmethod
    def dropped(cls) -> Fault:
        return cls(drop=True)

    @classmethod
    def short(cls, max_choices: int) -> Fault:
        return cls(max_choices=max_choices)

    @classmethod
    def no_content(cls, null: bool = False) -> Fault:
        return cls(strip_content="null" if null else "missing")

    @classmethod
    def garbage(cls) -> Fault:
        return cls(non_json=True)

    @classmethod
    def as_parts(cls) -> Fault:
        return cls(parts=True)

    @classmethod
    def trickle(cls, every_s: float) -> Fault:
        return cls(trickle_s=every_s)


@dataclass
class Hit:
    """One HTTP request as the server saw it."""

    prompt: str
    attempt: int  # 1-based, per prompt
    n: int
    seed: int | None
    max_tokens: int
    outcome: str  # "ok" | "<status>" | "drop" | "slow+ok" ...
    t: float  # time.monotonic() when it arrived


def last_user_message(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return str(messages[-1].get("content", "")) if messages else ""


def expected_tokens(prompt: str, seed: int | None, index: int) -> list[str]:
    """The full (uncut) reply for choice ``index`` of ``prompt`` under ``seed``."""
    return ["echo", *prompt.split(), f"seed={seed}", f"choice={index}", "done"]


def expected_text(prompt: str, seed: int | None, index: int, max_tokens: int = 10**9) -> str:
    return " ".join(expected_tokens(prompt, seed, index)[:max_tokens])


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many concurrent connects must not overflow the listen backlog
    allow_reuse_address = True


class OpenAIServer:
    def __init__(
        self,
        *,
        model: str = "fake",
        engine: Any = None,
        api_key: str | None = None,
        delay_s: float = 0.0,
        schedule: dict[str, list[Fault | None]] | None = None,
        faults: Callable[[str, int], Fault | None] | None = None,
        random_faults: list[tuple[float, Fault]] | None = None,
        fault_seed: int = 0,
        max_faults_per_prompt: int = 3,
        ignore_stop: bool = False,
        usage: bool = True,
        token_logprobs: Callable[[str], list[tuple[str, float, dict[str, float]]]] | None = None,
        max_model_len: int | None = None,
        tokenize: bool = False,
        ignore_format: bool = False,
    ) -> None:
        self.model = model
        self.engine = engine
        self.api_key = api_key
        self.delay_s = delay_s
        self.schedule = schedule or {}
        self.faults = faults
        self.random_faults = random_faults or []
        self.fault_seed = fault_seed
        self.max_faults_per_prompt = max_faults_per_prompt
        self.ignore_stop = ignore_stop
        self.usage = usage
        self.token_logprobs = token_logprobs
        self.max_model_len = max_model_len
        self.tokenize = tokenize
        self.tokenize_calls = 0
        self.ignore_format = ignore_format
        self.formats: list[Any] = []

        self.hits: list[Hit] = []
        self.counts: Counter[str] = Counter()  # HTTP requests received per prompt
        self.served: Counter[str] = Counter()  # choices answered (status 200) per prompt
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth_headers: list[str | None] = []
        self._random_faults_used: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> str:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a delay
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- inspection ---------------------------------------------------------------------------
    def count(self, prompt: str) -> int:
        with self._lock:
            return self.counts[prompt]

    def hits_for(self, prompt: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.prompt == prompt]

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    # -- behaviour ----------------------------------------------------------------------------
    def _pick_fault(self, prompt: str, attempt: int) -> Fault | None:
        plan = self.schedule.get(prompt)
        if plan is not None and attempt <= len(plan) and plan[attempt - 1] is not None:
            return plan[attempt - 1]
        if self.faults is not None:
            f = self.faults(prompt, attempt)
            if f is not None:
                return f
        if self.random_faults:
            rng = random.Random(f"{self.fault_seed}|{prompt}|{attempt}")
            x = rng.random()
            acc = 0.0
            for p, f in self.random_faults:
                acc += p
                if x < acc:
                    with self._lock:
                        if self._random_faults_used[prompt] >= self.max_faults_per_prompt:
                            return None
                        self._random_faults_used[prompt] += 1
                    return f
        return None

    def _answer(self, body: dict[str, Any], max_choices: int | None) -> dict[str, Any]:
        if body.get("logprobs") and self.token_logprobs is not None:
            return self._scripted_logprobs(body)
        messages = body["messages"]
        n = int(body.get("n") or 1)
        if max_choices is not None:
            n = min(n, max_choices)
        seed = body.get("seed")
        max_tokens = int(body.get("max_tokens") or 16)
        stop = tuple(body.get("stop") or ())
        if isinstance(body.get("stop"), str):
            stop = (body["stop"],)
        schema, regex = (None, None) if self.ignore_format else _format_of(body)
        if self.engine is not None:
            sampling = SamplingParams(
                n=n,
                temperature=float(_or(body.get("temperature"), 1.0)),
                top_p=float(_or(body.get("top_p"), 1.0)),
                max_tokens=max_tokens,
                stop=() if self.ignore_stop else stop,
                seed=seed,
                json_schema=schema,
                regex=regex,
            )
            with self._engine_lock:
                comps = self.engine.generate([Request.chat(messages)], sampling)[0]
                logprobs = None
                if body.get("logprobs") and hasattr(self.engine, "_node_logprobs"):
                    k = int(body.get("top_logprobs") or 0)
                    logprobs = [_hf_logprobs(self.engine, messages, c.text, k) for c in comps]
            choices = [(c.text, c.finish_reason) for c in comps]
            prompt_tokens = comps[0].prompt_tokens if comps else 0
            completion_tokens = sum(c.completion_tokens for c in comps)
        else:
            prompt = last_user_message(messages)
            choices = []
            completion_tokens = 0
            for i in range(n):
                toks = expected_tokens(prompt, seed, i)
                if schema is not None:  # a JSON value of the schema, one "token" per JSON token
                    toks = json.dumps(schema_instance(schema, random.Random(f"{prompt}/{seed}/{i}"))).split()
                text = " ".join(toks[:max_tokens])
                reason = "length" if len(toks) > max_tokens else "stop"
                if not self.ignore_stop:
                    text, hit = truncate_at_stop(text, stop)
                    reason = "stop" if hit else reason
                completion_tokens += len(text.split())
                choices.append((text, reason))
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        out: dict[str, Any] = {
            "id": f"chatcmpl-{random.getrandbits(48):x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reason,
                }
                for i, (text, reason) in enumerate(choices)
            ],
        }
        if self.engine is not None and logprobs is not None:
            for c, lp in zip(out["choices"], logprobs, strict=True):
                c["logprobs"] = {"content": lp}
        if self.usage:
            out["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        return out

    def _scripted_logprobs(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.token_logprobs is not None
        tokens = self.token_logprobs(last_user_message(body["messages"]))
        tokens = tokens[: int(body.get("max_tokens") or len(tokens))]
        k = int(body.get("top_logprobs") or 0)
        content = [_lp_entry(t, lp, alts, k) for t, lp, alts in tokens]
        text = "".join(t for t, _, _ in tokens)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": {"content": content},
            "finish_reason": "stop",
        }
        return {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "model": self.model,
            "choices": [choice],
        }


def check_response_format(fmt: Any) -> str | None:
    """Why ``response_format`` is not one the OpenAI API takes (None when it is)."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        return "response_format.type must be one of 'text', 'json_object', 'json_schema'"
    if fmt["type"] != "json_schema":
        return None
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        return "response_format.json_schema.name is required"
    if not isinstance(spec.get("schema"), dict):
        return "response_format.json_schema.schema must be a JSON schema object"
    import jsonschema

    try:
        jsonschema.validators.validator_for(spec["schema"]).check_schema(spec["schema"])
    except jsonschema.SchemaError as e:
        return f"response_format.json_schema.schema is invalid: {e.message}"
    return None


def _format_of(body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(JSON schema, regex) a request asks its reply to satisfy."""
    fmt = body.get("response_format")
    is_schema = isinstance(fmt, dict) and fmt.get("type") == "json_schema"
    schema = fmt["json_schema"]["schema"] if is_schema else None
    so = body.get("structured_outputs")
    regex = so.get("regex") if isinstance(so, dict) else None
    return schema, regex


def schema_instance(schema: dict[str, Any], rng: random.Random) -> Any:
    """A JSON value that satisfies a simple schema (object, array, string, integer, number, boolean,
    enum, const, oneOf/anyOf): what a constrained server answers."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return schema_instance(rng.choice(schema[key]), rng)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: schema_instance(v, rng) for k, v in props.items()}
    if kind == "array":
        return [schema_instance(schema.get("items") or {"type": "string"}, rng) for _ in range(2)]
    if kind == "integer":
        return rng.randint(int(schema.get("minimum", 0)), int(schema.get("maximum", 100)))
    if kind == "number":
        return round(rng.uniform(float(schema.get("minimum", 0)), float(schema.get("maximum", 1))), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return " ".join(rng.choice(("alpha", "beta", "gamma", "delta")) for _ in range(3))


def _lp_entry(token: str, logprob: float, alts: dict[str, float], k: int) -> dict[str, Any]:
    top = sorted(alts.items(), key=lambda kv: -kv[1])[:k]
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": a, "logprob": lp, "bytes": list(a.encode())} for a, lp in top],
    }


def _hf_logprobs(engine: Any, messages: list[dict[str, Any]], text: str, k: int) -> list[dict[str, Any]]:
    """What a server running ``engine`` (an HFEngine) sends for ``text``: each token of the reply
    with the model's log-prob and top-k alternatives, teacher-forced on the rendered chat."""
    import torch

    tok = engine.tokenizer
    ctx = tok(engine._render(Request.chat(messages)), add_special_tokens=False)["input_ids"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    dists = engine._node_logprobs(ctx, [tuple(ids[:j]) for j in range(len(ids))]) if ids else []
    out = []
    for t, d in zip(ids, dists, strict=True):
        top = torch.topk(d, k) if k else None
        alts = {} if top is None else {tok.decode([int(i)]): float(v) for v, i in zip(*top, strict=True)}
        out.append(_lp_entry(tok.decode([t]), float(d[t]), alts, k))
    return out


def _make_handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send_json(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(obj).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                self.close_connection = True

        def _send_raw(self, status: int, data: bytes, ctype: str, every_s: float = 0.0) -> None:
            """``data`` as is; with ``every_s``, one byte at a time (a trickling server)."""
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not every_s:
                    self.wfile.write(data)
                    return
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    if server._stopping.wait(every_s):
                        break
                self.close_connection = True
            except (BrokenPipeError, ConnectionResetError):  # the client gave up
                self.close_connection = True

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            err = {"message": message, "type": "invalid_request_error", "code": status}
            self._send_json(status, {"error": err}, headers)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                card: dict[str, Any] = {"id": server.model}
                if server.max_model_len is not None:
                    card["max_model_len"] = server.max_model_len
                self._send_json(200, {"object": "list", "data": [card]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") == "/tokenize" and server.tokenize:
                msgs = json.loads(raw).get("messages") or []
                with server._lock:
                    server.tokenize_calls += 1
                count = sum(len(str(m.get("content", "")).split()) for m in msgs)
                self._send_json(200, {"count": count, "max_model_len": server.max_model_len, "tokens": []})
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}")
                return
            try:
                body = json.loads(raw)
                messages = body["messages"]
                assert isinstance(messages, list) and messages
            except (ValueError, KeyError, AssertionError):
                self._error(400, "body must be JSON with a non-empty 'messages' list")
                return
            prompt = last_user_message(messages)
            with server._lock:
                server.counts[prompt] += 1
                attempt = server.counts[prompt]
                server.auth_headers.append(self.headers.get("Authorization"))
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
                hit = Hit(
                    prompt=prompt,
                    attempt=attempt,
                    n=int(body.get("n") or 1),
                    seed=body.get("seed"),
                    max_tokens=int(body.get("max_tokens") or 16),
                    outcome="?",
                    t=time.monotonic(),
                )
                server.hits.append(hit)
            try:
                hit.outcome = self._handle(body, prompt, attempt)
            finally:
                with server._lock:
                    server.in_flight -= 1

        def _handle(self, body: dict[str, Any], prompt: str, attempt: int) -> str:
            expected_auth = None if server.api_key is None else f"Bearer {server.api_key}"
            if expected_auth is not None and self.headers.get("Authorization") != expected_auth:
                self._error(401, "invalid api key")
                return "401"
            if body.get("model") != server.model:
                self._error(404, f"The model `{body.get('model')}` does not exist.")
                return "404"
            with server._lock:
                server.formats.append(body.get("response_format"))
            bad_format = check_response_format(body.get("response_format"))
            if bad_format is not None:
                self._error(400, bad_format)
                return "400"
            fault = server._pick_fault(prompt, attempt) or Fault()
            delay = max(server.delay_s, fault.delay_s)
            if delay and server._stopping.wait(delay):
                self.close_connection = True
                return "shutdown"
            if fault.drop:
                self.close_connection = True  # no answer at all: the client sees a disconnect
                return "drop"
            if fault.status is not None:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                self._error(fault.status, fault.message, headers)
                return str(fault.status)
            try:
                answer = server._answer(body, fault.max_choices)
            except Exception as e:  # a wrapped engine failed: a 500, as a real server would
                self._error(500, f"{type(e).__name__}: {e}")
                return "500"
            if fault.non_json:
                self._send_raw(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
                return "garbage"
            if fault.strip_content is not None:
                for c in answer["choices"]:
                    if fault.strip_content == "null":
                        c["message"]["content"] = None
                    else:
                        del c["message"]["content"]
                self._send_json(200, answer)
                return "no_content"
            if fault.parts:
                for c in answer["choices"]:
                    c["message"]["content"] = [{"type": "text", "text": c["message"]["content"]}]
            if fault.trickle_s:
                self._send_raw(200, json.dumps(answer).encode(), "application/json", fault.trickle_s)
                return "trickle"
            with server._lock:
                server.served[prompt] += len(answer["choices"])
            self._send_json(200, answer)
            return "ok" if not delay else "slow+ok"

    return Handler
