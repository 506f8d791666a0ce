"""Padding-free batches: a batch is one row of concatenated sequences with restarting positions.

transformers detects the restarts in ``position_ids`` (with no ``attention_mask``) and builds a
block-diagonal causal mask for sdpa/eager; flash-attention-2 reads the same position ids as
sequence boundaries. No compute is spent on padding, and there is no pad token to confuse with
eos (SmolLM2 uses <|im_end|> for both).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pack(sequences: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """(input_ids, mask) pairs -> one packed row: input_ids, position_ids, mask, segments.

    The first token of each sequence is forced out of the mask: in a packed row it would be
    "predicted" from the previous sequence's last token.
    """
    ids, positions, mask, segments = [], [], [], []
    for k, (seq_ids, seq_mask) in enumerate(sequences):
        ids += seq_ids
        positions += range(len(seq_ids))
        mask += [0, *seq_mask[1:]]
        segments += [k] * len(seq_ids)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "mask": torch.tensor([mask], dtype=torch.long),
        "segments": torch.tensor([segments], dtype=torch.long),
    }


def shared_prompt_mask(groups: Sequence[Sequence[int]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive 4D mask for rows of [prompt, response_1, ..., response_k] packed end to end.

    ``groups`` gives, per row, the length of the prompt then of each response. Response tokens
    attend causally to their own prompt and to themselves only, never to a sibling response, so
    each response's hidden states equal those of a separate prompt+response row.
    """
    lengths = [n for g in groups for n in g]
    total = sum(lengths)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    start = 0
    for g in groups:
        prompt = slice(start, start + g[0])
        allowed[prompt, prompt] = True
        pos = start + g[0]
        for n in g[1:]:
            block = slice(pos, pos + n)
            allowed[block, prompt] = True
            allowed[block, block] = True
            pos += n
        start = pos
    allowed &= torch.ones(total, total, dtype=torch.bool).tril()
    mask = torch.zeros(total, total, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None, None]
