"""Engine replicas as Ray actors: any engine (hf, vllm, openai), N copies, on one machine or a cluster.

``RayEngine(engine, model, replicas=N, address=...)`` is an ``Engine``: each call (``generate``,
``choice_logprobs``) goes to one replica, an actor that built the inner engine itself from
``(engine, model, engine_kwargs)``; the reply comes back to the caller. The driver (the process that
runs the recipe) stays the only writer of the run's store: actors only answer calls, so resume, the
engine cache and the funnel are the same as in one process, and a call returns exactly what the
inner engine returns for it (same requests, same sampling: same completions on any replica).

* Calls from several threads at once (``concurrent_calls = True``): the pipeline keeps several batches
  in flight (``run.overlap``, at least 2 per replica), and each call goes to the replica with the
  fewest calls in flight, among those that have finished loading, so every replica stays busy.
* A replica that dies (its process killed, its node lost: ``RayActorError`` and kin) is killed for
  good and replaced by a new actor (Ray places it where resources are free); the call it held is sent
  again to a live replica. Each call is tried ``max_retries + 1`` times, then ``EngineError``.
  Nothing is lost (the caller waits for the retried answer) and nothing is doubled (the dead
  replica's answer never arrived; only the driver commits).
* Resources per replica: with vLLM on a cluster with GPUs, one GPU per replica, or
  ``tensor_parallel_size * pipeline_parallel_size`` GPUs for a model that needs several (Ray gives the
  actor those GPUs, ``CUDA_VISIBLE_DEVICES``, and vLLM runs its tensor-parallel workers inside them);
  with hf, one GPU where the cluster has GPUs, else ``num_cpus`` (default 1) CPUs and as many torch
  threads; openai and vLLM's CPU build, CPUs only. ``actor_options`` (Ray's ``.options(...)``:
  ``num_cpus``, ``num_gpus``, ``resources``...) wins. ``engine="auto"`` is vllm where the cluster
  has GPUs and vllm is installed, else what ``auto`` means in the driver.
* ``address``: None or ``"auto"`` starts a local Ray instance (``ray.init(address="local")``);
  anything else joins that cluster (``HOST:6379`` from a node of the cluster, ``ray://HOST:10001``
  through Ray Client). Every node needs this package and the model (same path) installed. A Ray
  already initialised in this process (a test, a notebook) is used as it is.
* ``context_length`` and ``count_prompt_tokens`` pass through to a replica (``count_prompt_tokens``
  runs beside a generation in its own thread, on a copy of the inner engine's tokenizer: a fast
  tokenizer's padding state is not safe to share between threads); ``choice_logprobs`` exists only
  when the inner engine has it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from synth.engines.base import Completion, EngineError, Request, SamplingParams, TokenCount

log = logging.getLogger(__name__)

START_TIMEOUT_S = 1800.0  # a replica not loaded by then is an error (big models load slowly)
MAX_REPLACEMENTS_PER_REPLICA = 10  # a replica that keeps dying (out of memory as it loads) stops
META = "meta"  # the actors' concurrency group for calls that run beside a generation
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "SYNTH_CACHE", "TOKENIZERS_PARALLELISM")


class _Replica:
    """One replica (the body of the Ray actor): the inner engine, built inside the actor."""

    def __init__(self, engine: str, model: str | None, kwargs: dict[str, Any]) -> None:
        self.error: str | None = None
        self.engine: Any = None
        self.counter: Any = None
        self.counts_beside = False
        try:
            from synth.engines import get_engine

            self.engine = get_engine(engine, model, **kwargs)
        except Exception as e:  # noqa: BLE001 - reported to the driver as one line, not as a dead actor
            self.error = f"{type(e).__name__}: {e}"
            return
        # prompts are counted in the meta thread, beside a generation, with a tokenizer of their own;
        # a tokenizer that cannot be copied counts in the generation's thread, between calls
        self.counter, self.counts_beside = self.engine, False
        try:
            counter = copy.copy(self.engine)
            if getattr(counter, "tokenizer", None) is not None:
                counter.tokenizer = copy.deepcopy(counter.tokenizer)
            self.counter, self.counts_beside = counter, True
        except Exception:  # noqa: BLE001, S110 - counted one call at a time instead
            pass

    def info(self) -> dict[str, Any]:
        import ray

        if self.error is not None:
            return {"error": self.error}
        e = self.engine
        return {
            "name": e.name,
            "model": e.model,
            "choice_logprobs": callable(getattr(e, "choice_logprobs", None)),
            "count_prompt_tokens": callable(getattr(e, "count_prompt_tokens", None)),
            "counts_beside": self.counts_beside,
            "context_length": getattr(e, "context_length", None),
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
        }

    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        return self.engine.generate(requests, sampling)

    def choice_logprobs(
        self, requests: list[Request], prefix: str, choices: list[str]
    ) -> list[dict[str, float] | None]:
        return self.engine.choice_logprobs(requests, prefix, choices)

    def count_prompt_tokens(self, request: Request, limit: int) -> TokenCount | None:
        return self.counter.count_prompt_tokens(request, limit)


@dataclass
class _Slot:
    """One replica as the driver sees it: its actor, whether it has loaded, the calls it holds."""

    index: int
    handle: Any
    ready: Any  # the ObjectRef of its info(): resolved once the inner engine is built
    info: dict[str, Any] | None = None
    error: str | None = None  # it could not build its engine (not replaced: it would fail again)
    load: int = 0

    @property
    def loading(self) -> bool:
        return self.info is None and self.error is None


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start (None, "auto") or join (an address) a Ray cluster, unless this process already is in one;
    True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address in (None, "", "auto", "local"):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
        return True
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    try:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EngineError(f"--ray {address}: cannot join the Ray cluster there: {e}") from None
    return True


class RayEngine:
    """``replicas`` copies of ``engine`` as Ray actors behind one ``Engine`` (see the module doc)."""

    concurrent_calls = True

    def __init__(
        self,
        engine: str = "hf",
        model: str | None = None,
        *,
        replicas: int = 1,
        address: str | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        actor_options: dict[str, Any] | None = None,
        max_retries: int = 3,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        import ray

        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self._ray = ray
        self._owns_ray = connect(address)
        engine = _resolve(engine, ray)
        self.name = engine  # the inner engine's name and model: the run's cache keys and provenance
        self.model = model  # are those of one process (replaced by the replicas' own below)
        self.replicas = replicas
        self.max_retries = max_retries
        self.start_timeout_s = start_timeout_s
        self.replaced = 0  # replicas that died and were replaced
        self.retried = 0  # calls sent again after their replica died
        self.served = [0] * replicas  # calls each replica (slot) answered
        self._kwargs = dict(engine_kwargs or {})
        self._options = self._actor_options(engine, self._kwargs, dict(actor_options or {}))
        groups = {META: 2}  # declared with the class (Ray refuses them in .options())
        self._actor = ray.remote(concurrency_groups=groups)(_Replica).options(**self._options)
        self._args = (engine, model, self._kwargs)
        self._lock = threading.Lock()
        self._turn = 0
        self._dead = self._dead_errors()
        self._slots = [self._start(i) for i in range(replicas)]
        infos = [self._wait_ready(s) for s in self._slots]  # every replica loads before the first call
        self._info = infos[0]
        self.model = self._info["model"]
        log.info("ray engine: %d %s replica(s) of %s ready", replicas, engine, self.model)

    # -- resources --------------------------------------------------------------------------------
    def _actor_options(self, engine: str, kwargs: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        gpus_in_cluster = self._ray.cluster_resources().get("GPU", 0)
        if engine == "vllm" and gpus_in_cluster:
            gpus = int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))
        elif engine == "hf":
            gpus = 1 if gpus_in_cluster else 0
        else:  # openai (the model runs on a server), vllm's CPU build: no GPU
            gpus = 0
        options.setdefault("num_gpus", gpus)
        options.setdefault("num_cpus", 1)
        if engine == "hf" and not options["num_gpus"] and "threads" not in kwargs:
            kwargs["threads"] = max(1, int(options["num_cpus"]))  # torch threads = the CPUs Ray gave it
        # an openai replica sends many requests at once; a local model answers one call at a time
        options.setdefault("max_concurrency", 64 if engine == "openai" else 1)
        options.setdefault("max_restarts", 0)  # a dead replica is replaced by the driver, see _replace
        return options

    def _dead_errors(self) -> tuple[type[BaseException], ...]:
        ex = self._ray.exceptions
        names = (
            "RayActorError",
            "WorkerCrashedError",
            "NodeDiedError",
            "OutOfMemoryError",
            "ObjectLostError",
        )
        return tuple(getattr(ex, n) for n in names if hasattr(ex, n))

    # -- replicas ---------------------------------------------------------------------------------
    def _start(self, index: int) -> _Slot:
        handle = self._actor.remote(*self._args)
        return _Slot(index, handle, handle.info.options(concurrency_group=META).remote())

    def _wait_ready(self, slot: _Slot) -> dict[str, Any]:
        """The first replicas: each must load, else the engine cannot start (one line, the cause)."""
        self._settle(slot, self.start_timeout_s, replace=False)
        if slot.info is None:
            raise EngineError(f"ray engine: replica {slot.index} {slot.error}")
        return slot.info

    def _settle(self, slot: _Slot, timeout: float, replace: bool = True) -> None:
        """Wait up to ``timeout`` for a replica to load; note its info or why it failed (a replica
        that died while loading is replaced, when ``replace``)."""
        try:
            info = self._ray.get(slot.ready, timeout=timeout)
        except self._ray.exceptions.GetTimeoutError:
            slot.error = (
                f"did not start within {timeout:g}s (asked per replica: {self._resources()}; the cluster "
                f"has {self._ray.cluster_resources()})"
            )
            return
        except self._dead as e:
            slot.error = f"died while starting: {_first_line(e)}"
            if replace:
                self._replace(slot, e)
            return
        if "error" in info:
            slot.error = f"could not build the engine: {info['error']}"
            log.warning("ray engine: replica %d %s", slot.index, slot.error)
            return
        slot.info = info

    def _resources(self) -> str:
        return ", ".join(f"{k}={self._options[k]}" for k in ("num_cpus", "num_gpus") if k in self._options)

    def _acquire(self) -> _Slot:
        """The loaded replica with the fewest calls in flight (ties in turn); waits for one to load."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            with self._lock:
                ready = [s for s in self._slots if s.info is not None]
                if ready:
                    self._turn += 1
                    slot = min(ready, key=lambda s: (s.load, (s.index - self._turn) % len(self._slots)))
                    slot.load += 1
                    return slot
                loading = [s for s in self._slots if s.loading]
                failed = "; ".join(f"replica {s.index} {s.error}" for s in self._slots if s.error)
            if not loading:
                raise EngineError(f"ray engine: no replica left: {failed}")
            if time.monotonic() > deadline:
                raise EngineError(f"ray engine: no replica loaded within {self.start_timeout_s:g}s")
            done, _ = self._ray.wait([s.ready for s in loading], num_returns=1, timeout=1.0)
            for s in loading:
                if s.ready in done:
                    self._settle(s, 0)

    def _replace(self, slot: _Slot, cause: BaseException) -> None:
        """Kill a dead replica for good and start another in its place (once per death)."""
        with self._lock:
            if self._slots[slot.index] is not slot:  # another caller replaced it already
                return
            if self.replaced >= MAX_REPLACEMENTS_PER_REPLICA * self.replicas:
                slot.info = None  # no call goes there any more
                slot.error = slot.error or f"died ({_first_line(cause)}); not replaced: too many deaths"
                return
            fresh = self._start(slot.index)
            self._slots[slot.index] = fresh
            self.replaced += 1
        log.warning(
            "ray engine: replica %d died (%s); a new replica takes its place", slot.index, _first_line(cause)
        )
        with contextlib.suppress(Exception):  # it is gone already
            self._ray.kill(slot.handle, no_restart=True)
        threading.Thread(target=self._settle, args=(fresh, self.start_timeout_s), daemon=True).start()

    def _call(self, method: str, *args: Any) -> Any:
        """``method(*args)`` on one replica; sent again elsewhere when that replica dies."""
        last = ""
        for attempt in range(self.max_retries + 1):
            slot = self._acquire()
            try:
                out = self._ray.get(getattr(slot.handle, method).remote(*args))
                with self._lock:
                    self.served[slot.index] += 1
                return out
            except self._dead as e:
                last = _first_line(e)
                self._replace(slot, e)
                if attempt < self.max_retries:
                    self.retried += 1
                    log.warning("ray engine: %s on replica %d failed; sent again (%d/%d)", method,
                                slot.index, attempt + 1, self.max_retries)  # fmt: skip
            finally:
                with self._lock:
                    slot.load -= 1
        raise EngineError(f"ray engine: {method} failed on {self.max_retries + 1} replicas; last: {last}")

    # -- the Engine interface ---------------------------------------------------------------------
    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        if not requests:
            return []
        return self._call("generate", requests, sampling)

    def __getattr__(self, name: str) -> Any:
        # choice_logprobs / count_prompt_tokens exist only where the inner engine has them (callers
        # look for them with getattr)
        if name == "choice_logprobs" and self.__dict__.get("_info", {}).get("choice_logprobs"):
            return self._choice_logprobs
        if name == "count_prompt_tokens" and self.__dict__.get("_info", {}).get("count_prompt_tokens"):
            return self._count_prompt_tokens
        raise AttributeError(name)

    def _choice_logprobs(
        self, requests: list[Request], prefix: str, choices: list[str]
    ) -> list[dict[str, float] | None]:
        if not requests:
            return []
        return self._call("choice_logprobs", requests, prefix, list(choices))

    @property
    def context_length(self) -> int | None:
        return self._info.get("context_length")

    def _count_prompt_tokens(self, request: Request, limit: int) -> TokenCount | None:
        """On any loaded replica, in its meta thread (never queued behind a generation)."""
        last = ""
        for _ in range(self.max_retries + 1):
            with self._lock:
                ready = [s for s in self._slots if s.info is not None] or list(self._slots)
                self._turn += 1
                slot = ready[self._turn % len(ready)]
            try:
                call = slot.handle.count_prompt_tokens
                if slot.info and slot.info.get("counts_beside"):
                    call = call.options(concurrency_group=META)
                return self._ray.get(call.remote(request, limit))
            except self._dead as e:
                last = _first_line(e)
                self._replace(slot, e)
        raise EngineError(
            f"ray engine: count_prompt_tokens failed on {self.max_retries + 1} replicas; {last}"
        )

    # -- inspection and shutdown ------------------------------------------------------------------
    def replica_pids(self) -> list[int | None]:
        """Each replica's process id (None while one loads)."""
        with self._lock:
            return [s.info["pid"] if s.info else None for s in self._slots]

    def loads(self) -> list[int]:
        """Calls each replica holds now."""
        with self._lock:
            return [s.load for s in self._slots]

    def close(self) -> None:
        """Kill the replicas; shut Ray down when this engine started it."""
        for s in self._slots:
            with contextlib.suppress(Exception):  # already gone
                self._ray.kill(s.handle, no_restart=True)
        if self._owns_ray:
            self._ray.shutdown()


def _resolve(engine: str, ray: Any) -> str:
    """``auto``: vllm where the cluster has GPUs and vllm is installed, else what ``auto`` means in
    this process (``synth.engines.resolve_engine``: vllm where it runs here, else hf)."""
    if engine != "auto":
        return engine
    import importlib.util

    if ray.cluster_resources().get("GPU", 0) and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    from synth.engines import resolve_engine

    return resolve_engine(engine)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()
