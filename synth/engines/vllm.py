"""vLLM engine: offline ``vllm.LLM`` on a CUDA GPU (``pip install 'synth-llm[gpu]'``).

vllm is imported inside the constructor, so importing this module costs nothing and works on
machines without vllm. Prompts are rendered with the tokenizer's chat template into token ids and
passed to ``llm.generate`` as ``{"prompt_token_ids": ...}`` (the template already holds any BOS
token, so nothing is added twice); this works across vllm versions, unlike batched ``llm.chat``.

Greedy sampling (temperature 0) with ``n > 1`` asks vllm for one sample and repeats it ``n`` times:
the samples would be identical, and some vllm versions reject ``n > 1`` when greedy.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from synth.engines.base import Completion, EngineError, Request, SamplingParams, truncate_at_stop

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'synth-llm[gpu]'"


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
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
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
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
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding on some versions
                ids = ids["input_ids"]
            return list(ids)
        # a base model without a chat template: plain role-tagged text
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
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
