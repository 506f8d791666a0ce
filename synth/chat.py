"""Chat-template tokenization with loss masks, for any model's own template (the trainers in train/
and the reward-model scorer in synth.stages.reward encode conversations here, one way).

SmolLM2's template (like many) has no ``{% generation %}`` markers, so transformers cannot return an
assistant mask. Instead we render the conversation once and find each assistant turn by rendering
its prefix: the turn starts where ``render(messages[:i], add_generation_prompt=True)`` ends (after
the "<|im_start|>assistant\\n" header) and stops where ``render(messages[:i + 1])`` ends. Tokens
are mapped to those character spans through the fast tokenizer's offsets. This works for every
prefix-stable template (ChatML, Llama 3, Mistral, ...) and fails loudly otherwise.

Two masks come out of one span:

* ``sft``: the assistant's content *and* its end-of-turn token, so the model learns to stop.
* ``dpo``: the content only. Llama 3 masks formatting tokens (headers, end-of-turn and any other
  special token) out of the DPO loss: they are identical in chosen and rejected, and pushing
  their probabilities apart destabilises training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Message = dict[str, str]
MaskKind = Literal["sft", "dpo"]


class TemplateError(ValueError):
    """The chat template does not render conversations prefix-stably."""


@dataclass
class Encoded:
    input_ids: list[int]
    mask: list[int]  # 1 where the token is a target of the loss

    def truncate(self, max_length: int) -> Encoded:
        return Encoded(self.input_ids[:max_length], self.mask[:max_length])


def render(tokenizer, messages: Sequence[Message], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )


def special_ids(tokenizer) -> set[int]:
    """Every special token id: eos/pad/bos plus added special tokens such as chat headers."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in tokenizer.added_tokens_decoder.items() if t.special)
    return ids


def assistant_spans(tokenizer, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn's body.

    A span runs from the end of the turn's header to the end of its end-of-turn marker (trailing
    whitespace such as ChatML's newline is left out: it is template glue, not the answer).
    """
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True)
        through = render(tokenizer, messages[: i + 1]).rstrip()
        if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
            raise TemplateError(
                "the chat template is not prefix-stable (rendering the first turns alone does not "
                f"give a prefix of the whole conversation) at message {i}; pass a model whose "
                "template is, or a training template via tokenizer.chat_template"
            )
        spans.append((len(before), len(through)))
    return text, spans


def encode(tokenizer, messages: Sequence[Message], kind: MaskKind = "sft") -> Encoded:
    """Token ids of the rendered conversation and the mask of assistant tokens in the loss."""
    return _encode(tokenizer, messages, kind)[0]


def _encode(tokenizer, messages, kind) -> tuple[Encoded, list[int]]:
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    specials = special_ids(tokenizer) if kind == "dpo" else set()
    mask = []
    for tid, (start, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = any(s <= start < e for s, e in spans)
        mask.append(int(inside and tid not in specials))
    starts = [start for start, _ in enc["offset_mapping"]]
    return Encoded(list(enc["input_ids"]), mask), starts


def encode_prompt_responses(
    tokenizer, prompt: Sequence[Message], responses: Sequence[Message], kind: MaskKind
) -> tuple[list[int], list[Encoded]]:
    """Shared prompt ids plus each response's continuation, for one-row multi-response encoding.

    Each ``prompt + [response]`` is encoded separately and split where the prompt (with the
    assistant header) ends, so ``prompt_ids + part.input_ids`` is exactly that encoding. Should a
    tokenizer merge across the boundary differently per response, the first response's prompt ids
    are used for all (a one-token approximation).
    """
    cut = len(render(tokenizer, prompt, generation_prompt=True))
    prompt_ids: list[int] | None = None
    parts = []
    for response in responses:
        full, starts = _encode(tokenizer, [*prompt, response], kind)
        k = sum(1 for start in starts if start < cut)
        if prompt_ids is None:
            prompt_ids = full.input_ids[:k]
        parts.append(Encoded(full.input_ids[k:], full.mask[k:]))
    return prompt_ids or [], parts
