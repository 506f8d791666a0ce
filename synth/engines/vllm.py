"""vLLM engine: offline ``vllm.LLM`` on a CUDA GPU (``pip install 'synth-llm[gpu]'``).

vllm is imported inside the constructor, so importing this module costs nothing and works on
machines without vllm. Prompts are rendered with the tokenizer's chat template into token ids and
passed to ``llm.generate`` as ``{"prompt_token_ids": ...}`` (the template already holds any BOS
token, so nothing is added twice); this works across vllm versions, unlike batched ``llm.chat``.

Greedy sampling (temperature 0) with ``n > 1`` asks vllm for one sample and repeats it ``n`` times:
the samples would be identical, and some vllm versions reject ``n > 1`` when greedy.

Judge scores (``choice_logprobs``) are read the way the hf engine reads them (whole choices, see
``synth.engines.choices``), from vllm's top log-probs: one ``max_tokens=1`` request with
``SamplingParams(logprobs=k)`` per prefix of every choice (the prompt plus "", " ", " 1", " 1" + "0",
...), whose ``outputs[0].logprobs[0]`` (token id -> ``Logprob``) is the next-token distribution there.
The requests share the prompt, so vllm's prefix cache computes it once. A token outside the top k counts
as improbable (log-prob -inf).

Prompt budget: ``context_length`` is the engine's ``max_model_len``; ``count_prompt_tokens`` renders
the chat template and counts with vllm's tokenizer (a prompt too long by its bytes is not tokenized).
"""

from __future__ import annotations

import copy
import logging
import math
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

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'synth-llm[gpu]'"


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
        enable_prefix_caching: bool | None = None,
    ) -> None:
        try:
            import vllm
        except ImportError as e:
            raise EngineError(
                f"the vllm engine needs the 'vllm' package, which is not installed ({e}); "
                f"install it with: {INSTALL_HINT}  (needs a CUDA GPU; on CPU use --engine hf)"
            ) from None
        except Exception as e:  # vllm present but broken (CUDA libs, version clash...)
            raise EngineError(f"vllm is installed but failed to import: {e}") from e
        try:
            import torch
        except ImportError as e:  # pragma: no cover - torch is a base dependency
            raise EngineError(f"the vllm engine needs torch: {e}") from None
        if not torch.cuda.is_available():
            raise EngineError(
                "the vllm engine needs a CUDA GPU, and torch sees none "
                "(torch.cuda.is_available() is False); on CPU use --engine hf"
            )
        self.model = str(model)
        self._vllm = vllm
        kwargs: dict[str, Any] = {
            "model": self.model,
            "dtype": dtype,
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "seed": seed,
        }
        if enable_prefix_caching is not None:  # requests that share a prefix (a solution's step
            # rollouts) reuse its KV blocks instead of prefilling it again; None: vllm's default
            kwargs["enable_prefix_caching"] = enable_prefix_caching
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self._max_model_len = max_model_len
        self._max_token_bytes: int | None = None
        self._continues: dict[int, bool] = {}
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as e:
            raise EngineError(f"vllm could not load {self.model!r}: {e}") from e
        self.tokenizer = self.llm.get_tokenizer()

    # -- the batch interface -------------------------------------------------------------
    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        if not requests:
            return []
        n_ask = 1 if sampling.greedy else sampling.n
        params = self._vllm.SamplingParams(
            n=n_ask,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
        )
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

    def _prompt_ids(self, request: Request) -> list[int]:
        messages = [dict(m) for m in request.messages]
        cont = request.continues  # a final assistant message is a prefix to continue
        if getattr(self.tokenizer, "chat_template", None):
            how = {"add_generation_prompt": False, "continue_final_message": True} if cont else {}
            ids = self.tokenizer.apply_chat_template(
                messages, tokenize=True, **{"add_generation_prompt": True, **how}
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding on some versions
                ids = ids["input_ids"]
            return list(ids)
        # a base model without a chat template: plain role-tagged text
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        if cont:
            text = text.removesuffix("\nassistant:")  # ends with "assistant: <the prefix>"
        return list(self.tokenizer.encode(text))

    def _completion(self, out: Any, c: Any, sampling: SamplingParams) -> Completion:
        text, hit = truncate_at_stop(c.text, sampling.stop)  # vllm applies stop; a safety net
        ntok = len(c.token_ids)
        if hit:
            ntok = len(self.tokenizer.encode(text, add_special_tokens=False))
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
        tok = [list(self.tokenizer.encode(c, add_special_tokens=False)) for c in choices]
        nodes = choice_nodes(tok)
        prompts = []
        for r in requests:
            ctx = list(self.tokenizer.encode(self._prompt_text(r) + prefix, add_special_tokens=False))
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

    def _prompt_text(self, request: Request) -> str:
        messages = [dict(m) for m in request.messages]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

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
            self._prompt_text(request),
            limit,
            self._max_token_bytes,
            lambda text: len(self.tokenizer.encode(text, add_special_tokens=False)),
        )
