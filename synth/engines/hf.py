"""transformers engine: real batching on CPU or GPU.

Prompts are sorted by length and cut into batches so padding stays small; batches are left-padded
(decoder-only generation appends on the right); ``n`` samples per prompt come from one
``num_return_sequences`` call. bf16 is used where the hardware runs it natively (CUDA with bf16, or a
CPU with AVX512-BF16/AMX): on such a CPU it decodes 1.6-1.9x faster than fp32.

``choice_logprobs`` (a judge's score distribution) is exact and teacher-forced over whole choices
(``synth.engines.choices``). ``context_length`` is the model's ``max_position_embeddings``;
``count_prompt_tokens`` counts the rendered chat with the tokenizer, and proves a huge prompt too long
from its bytes (or a prefix) without tokenizing it. One call at a time: ``concurrent_calls = False``.

Structured output (``SamplingParams.json_schema`` / ``regex``) is validated and retried
(``synth.engines.structured``): transformers has no constrained decoding.
"""

from __future__ import annotations

import copy
import hashlib
import os
from functools import lru_cache

from synth.engines.base import (
    Completion,
    Request,
    SamplingParams,
    TokenCount,
    count_tokens,
    max_token_bytes,
    truncate_at_stop,
)
from synth.engines.choices import choice_nodes, whole_choice_logprobs
from synth.engines.embedded import is_embedded, resolve_model
from synth.engines.structured import generate_checked


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(device: str, dtype: str = "auto"):
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


class HFEngine:
    name = "hf"
    concurrent_calls = False  # one model, one call at a time (see ``Engine``)

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 16,
        threads: int | None = None,
        structured_retries: int = 3,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = "SmolLM2-135M-Instruct" if is_embedded(model) else str(model)
        path = resolve_model(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if threads or self.device == "cpu":
            torch.set_num_threads(threads or os.cpu_count() or 1)
        self.dtype = pick_dtype(self.device, dtype)
        self.batch_size = batch_size
        self.structured_retries = structured_retries
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device)
        self.lm.eval()
        self._texts: list[str] | None = None  # each token id's text, built on first use
        self._cont = None  # tokens that continue a word or number (choice_logprobs)
        self._max_token_bytes: int | None = None

    # -- the batch interface -------------------------------------------------------------
    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        """Structured output (``sampling.json_schema`` / ``regex``): validate and retry (transformers
        has no constrained decoding): a reply's valid part is kept, an invalid reply is sampled again
        up to ``structured_retries`` times (``synth.engines.structured``)."""
        return generate_checked(self._generate, requests, sampling, self.structured_retries, lenient=True)

    def _generate(self, requests: list[Request], sampling: SamplingParams) -> list[list[Completion]]:
        if sampling.greedy and sampling.n > 1:  # n identical samples: decode one, repeat it
            once = self._generate(requests, sampling.replace(n=1))
            return [[c, *(copy.deepcopy(c) for _ in range(sampling.n - 1))] for (c,) in once]
        prompts = [self._render(r) for r in requests]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        # big prompts x many samples would blow memory: keep batch_size rows of n samples in flight
        per_batch = max(1, self.batch_size // sampling.n) if sampling.n > 1 else self.batch_size
        results: list[list[Completion] | None] = [None] * len(requests)
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            batch = self._generate_batch([prompts[i] for i in idx], sampling)
            for i, comps in zip(idx, batch, strict=True):
                results[i] = comps
        return results  # type: ignore[return-value]

    def choice_logprobs(
        self, requests: list[Request], prefix: str, choices: list[str]
    ) -> list[dict[str, float]]:
        """log P(choice, whole | chat prompt + assistant ``prefix``) for each request and choice.

        Teacher-forced, so a judge can read a whole score distribution (G-Eval style) instead of
        one sampled number: small judges put most mass on one digit but still rank responses.
        *Whole* (``synth.engines.choices``): the choice spelled out and then not extended, so " 1"
        and " 10" are disjoint even where " 10" is " 1" + "0". Exact over each choice's full token
        sequence: one forward pass over the prompt, then every choice on top of its KV cache.
        """
        tok = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        nodes = choice_nodes(tok)
        cont = self._continuing_mask()
        out = []
        for r in requests:
            ctx = self.tokenizer(self._render(r) + prefix, add_special_tokens=False)["input_ids"]
            dists = dict(zip(nodes, self._node_logprobs(ctx, nodes), strict=True))
            out.append(
                whole_choice_logprobs(
                    choices,
                    tok,
                    lambda node, t, d=dists: float(d[node][t]),
                    lambda node, d=dists: float(d[node].exp()[cont].sum()),
                )
            )
        return out

    def _node_logprobs(self, ctx: list[int], nodes: list[tuple[int, ...]]):
        """Next-token log-probs (float32 [vocab]) after ``ctx`` + each node; ``nodes[0]`` is ().

        One forward pass over ``ctx``; then each longest node (one no other node extends) on top of
        its KV cache, cropped back after each: no copy of the cache, whatever the prompt's length.
        """
        import torch

        dev = self.device
        n = len(ctx)
        leaves = [x for x in nodes if x and not any(len(y) > len(x) and y[: len(x)] == x for y in nodes)]
        with torch.inference_mode():
            first = self.lm(input_ids=torch.tensor([ctx], device=dev), use_cache=True)
            dist = {(): torch.log_softmax(first.logits[0, -1].float(), -1).cpu()}
            # transformers >= 5.2x calls the KV cache `cache`, older versions `past_key_values`
            key = "cache" if "cache" in first else "past_key_values"
            cache = first[key]
            for leaf in leaves:
                if cache is not None:
                    pos = torch.arange(n, n + len(leaf), device=dev)[None]
                    ids = torch.tensor([leaf], device=dev)
                    logits = self.lm(input_ids=ids, position_ids=pos, use_cache=True, **{key: cache}).logits[
                        0
                    ]
                    try:
                        cache.crop(-len(leaf))  # back to the prompt alone for the next leaf
                    except Exception:  # noqa: BLE001 - a cache that cannot crop: recompute from here on
                        cache = None
                else:
                    logits = self.lm(input_ids=torch.tensor([ctx + list(leaf)], device=dev)).logits[0, n:]
                logp = torch.log_softmax(logits.float(), -1).cpu()
                for j in range(len(leaf)):
                    dist[leaf[: j + 1]] = logp[j]
        return [dist[x] for x in nodes]

    def _vocab_texts(self) -> list[str]:
        if self._texts is None:
            self._texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return self._texts

    def _continuing_mask(self):
        """Bool [vocab]: tokens whose text starts with a letter or digit (they extend a number)."""
        import torch

        if self._cont is None:
            size = self.lm.get_output_embeddings().weight.shape[0]
            mask = torch.zeros(size, dtype=torch.bool)
            for i, text in enumerate(self._vocab_texts()[:size]):
                mask[i] = text[:1].isalnum()
            self._cont = mask
        return self._cont

    # -- prompt budget -------------------------------------------------------------------------
    @property
    def context_length(self) -> int | None:
        """Tokens the model attends to: prompt plus generated (``max_position_embeddings``)."""
        n = getattr(self.lm.config, "max_position_embeddings", None)
        return int(n) if n else None

    def count_prompt_tokens(self, request: Request, limit: int) -> TokenCount:
        """The rendered prompt's token count; a prompt too long by its bytes alone is not tokenized."""
        if self._max_token_bytes is None:
            self._max_token_bytes = max_token_bytes(self.tokenizer)
        text = self._render(request)
        return count_tokens(text, limit, self._max_token_bytes, self._count)

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, request: Request) -> str:
        # a final assistant message is a prefix to continue (``Request.continues``). No prefix cache:
        # each request (and each of its n samples) is prefilled in full
        how = {"add_generation_prompt": False, "continue_final_message": True} if request.continues else {}
        return self.tokenizer.apply_chat_template(
            list(request.messages), tokenize=False, **{"add_generation_prompt": True, **how}
        )

    def _generate_batch(self, prompts: list[str], sampling: SamplingParams) -> list[list[Completion]]:
        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.device)
        kwargs = dict(
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=sampling.n,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            # the seed covers the batch's content: a resumed run regenerates the same batch alike
            digest = hashlib.sha256(("\x00".join(prompts) + str(sampling.seed)).encode()).digest()
            torch.manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self.lm.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        new = out[:, width:]
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        results: list[list[Completion]] = []
        for p, plen in enumerate(prompt_lens):
            comps = []
            for j in range(sampling.n):
                ids = new[p * sampling.n + j].tolist()
                hit_eos = eos in ids
                if hit_eos:
                    ids = ids[: ids.index(eos)]
                while ids and ids[-1] == pad:
                    ids.pop()
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                text, hit_stop = truncate_at_stop(text, sampling.stop)
                finished = hit_eos or hit_stop or len(ids) < sampling.max_tokens
                comps.append(
                    Completion(
                        text=text,
                        prompt_tokens=int(plen),
                        completion_tokens=len(ids),
                        finish_reason="stop" if finished else "length",
                    )
                )
            results.append(comps)
        return results
