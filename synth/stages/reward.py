"""Reward-model scoring: a trained scalar-head model (``synth train rm``) and the stage kind that uses it.

``RewardModel`` loads an ``AutoModelForSequenceClassification`` with ``num_labels=1`` and its
tokenizer, and scores (prompt, response) pairs exactly as the reward-model trainer encodes them
(``synth.chat.encode_prompt_responses``: the chat template rendered over the prompt plus the assistant
response, no extra special tokens, prompt cut to ``max_length - 1`` and the response to what room is
left), reading the head's output at the last real token. Batches are right-padded with explicit
position ids, whatever padding side the saved tokenizer declares, so a row's score does not depend on
what it is batched with.

``RewardStage`` is the stage kind (``Run.map``): it writes ``rec.scores[score]`` for each row that has
a response and rejects the ones that have none ('no_response') or whose reward is not a finite number
('{score}_not_finite'). Its reward model may be a factory, called when the first batch that needs a
score runs: a resumed run whose scoring is finished never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from synth.records import SFTRecord

Message = dict[str, str]


class Scores(Protocol):
    """Anything that scores (prompt, response) pairs: a ``RewardModel`` or a test stand-in."""

    def score(self, prompts: Sequence[Sequence[Message]], responses: Sequence[str]) -> list[float]: ...


class RewardModel:
    """A reward model folder (as ``synth train rm`` saves it), ready to score responses."""

    def __init__(
        self,
        path: str | Path,
        device: str | None = None,
        batch_size: int = 8,
        max_length: int = 1024,
        dtype: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1 or max_length < 2:
            raise ValueError("batch_size must be >= 1 and max_length >= 2")
        self.path = str(path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.max_length = max_length
        if dtype is None:  # fp32 on CPU; bf16 where a GPU runs it natively
            cuda_bf16 = self.device.startswith("cuda") and torch.cuda.is_bf16_supported()
            torch_dtype = torch.bfloat16 if cuda_bf16 else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{self.path}: the tokenizer has no chat template to format conversations")
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch_dtype)
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"{self.path} has {self.model.config.num_labels} labels; "
                "a reward model has one (num_labels=1)"
            )
        self.model.to(self.device).eval()
        self.head = _score_head(self.model)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def encode(self, prompt: Sequence[Message], response: str) -> list[int]:
        """Token ids of prompt + assistant response, as the reward-model trainer builds them."""
        from synth.chat import encode_prompt_responses

        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
        prompt_ids, parts = encode_prompt_responses(
            self.tokenizer, prompt, [{"role": "assistant", "content": response}], "sft"
        )
        prompt_ids = prompt_ids[: self.max_length - 1]
        room = max(1, self.max_length - len(prompt_ids))
        return prompt_ids + parts[0].input_ids[:room]

    def score(self, prompts: Sequence[Sequence[Message]], responses: Sequence[str]) -> list[float]:
        """One scalar reward per (prompt, response); identical pairs are scored once."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        keys = [_pair_key(p, r) for p, r in zip(prompts, responses, strict=True)]
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        unique = list(first)
        seqs = [self.encode(prompts[first[k]], responses[first[k]]) for k in unique]
        rewards = dict(zip(unique, self._forward(seqs), strict=True))
        return [rewards[k] for k in keys]

    def _forward(self, seqs: list[list[int]]) -> list[float]:
        import torch

        out: list[float] = [math.nan] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths pad little
        captured: dict[str, torch.Tensor] = {}
        # the head's output at every position (the model itself pools at the last non-pad token id,
        # which is wrong when a sequence ends in the pad token, e.g. pad = eos = end of turn)
        handle = self.head.register_forward_hook(lambda _m, _i, o: captured.__setitem__("scores", o))
        try:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                width = max(len(seqs[i]) for i in idx)
                ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):  # right padding: positions stay 0..len-1, as in training
                    ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                    mask[row, : len(seqs[i])] = 1
                positions = torch.arange(width).expand(len(idx), width)
                with torch.inference_mode():
                    self.model(
                        input_ids=ids.to(self.device),
                        attention_mask=mask.to(self.device),
                        position_ids=positions.to(self.device),
                        use_cache=False,
                    )
                per_token = captured.pop("scores")[..., 0].float().cpu()  # [batch, width]
                last = torch.tensor([len(seqs[i]) - 1 for i in idx])
                for i, v in zip(idx, per_token[torch.arange(len(idx)), last].tolist(), strict=True):
                    out[i] = float(v)
        finally:
            handle.remove()
        return out


def _score_head(model):
    heads = [m for name, m in model.named_modules() if name.split(".")[-1] == "score"]
    if not heads:
        raise ValueError("the reward model has no 'score' head (use a *ForSequenceClassification model)")
    return heads[-1]


def _pair_key(prompt: Sequence[Message], response: str) -> tuple:
    return tuple((m["role"], m["content"]) for m in prompt), response


def record_prompt(rec: SFTRecord) -> list[Message]:
    return [{"role": m.role, "content": m.content} for m in rec.prompt]


@dataclass(kw_only=True)
class RewardStage:
    """The reward-model scoring stage: ``scores[score]`` = the reward of each row's response.

    ``rm`` is a ``Scores`` or a zero-argument factory of one (e.g. loading a ``RewardModel``), called
    once, when a batch first needs a score.
    """

    rm: Scores | Callable[[], Scores]
    name: str = "rm_score"
    score: str = "rm"

    @property
    def model(self) -> Scores:
        if not hasattr(self.rm, "score"):
            self.rm = self.rm()
        return self.rm  # type: ignore[return-value]

    def rewards(self, records: Sequence[SFTRecord]) -> list[float]:
        """The reward of each record's response (no model call, and no loading, for none)."""
        if not records:
            return []
        return self.model.score([record_prompt(r) for r in records], [r.response or "" for r in records])

    def __call__(self, records: list[SFTRecord]) -> list[SFTRecord]:
        todo = [r for r in records if r.response]
        for rec, reward in zip(todo, self.rewards(todo), strict=True):
            if math.isfinite(reward):
                rec.scores[self.score] = reward
                rec.keep(self.name)
            else:
                rec.reject(self.name, f"{self.score}_not_finite")
        for rec in records:
            if not rec.response:
                rec.reject(self.name, "no_response")
        return records
