"""The three losses, as plain functions of tensors so tests can check them by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Reward-model ranking loss ``-log sigmoid(r_c - r_r - m)``, mean over pairs.

    The margin (Llama 2) asks for a larger reward gap where annotators said the chosen response
    is much better.
    """
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def token_logps_at(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row; ``logsumexp`` + gather instead of a full
    ``log_softmax`` keeps a single vocab-sized tensor alive."""
    logits = logits.float()
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t >= 1; shape (..., T - 1)."""
    return token_logps_at(logits[..., :-1, :], input_ids[..., 1:])


def packed_target_logps(
    model, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """log p of each target token of one packed row (``targets``: their positions, never 0).

    ``logits_to_keep`` projects onto the vocabulary only at the positions that predict a target:
    prompts, headers and end-of-turn tokens never reach the (largest) LM-head matmul.
    """
    logits = model(
        input_ids=input_ids, position_ids=position_ids, use_cache=False, logits_to_keep=targets - 1
    ).logits[0]
    return token_logps_at(logits, input_ids[0, targets])


def segment_logps(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    segments: torch.Tensor,
    n_segments: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of masked token log-probs and the masked-token count per packed sequence.

    ``mask[t]`` marks token t as a target; ``segments[t]`` says which sequence it belongs to.
    The first token of a sequence is never a target, so the shift never crosses sequences.
    """
    logps = token_logps(logits, input_ids).flatten()
    m = mask[..., 1:].flatten().to(logps.dtype)
    seg = segments[..., 1:].flatten()
    sums = logps.new_zeros(n_segments).index_add(0, seg, logps * m)
    counts = logps.new_zeros(n_segments).index_add(0, seg, m)
    return sums, counts


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss (mean) and the implicit rewards ``beta * (log pi - log ref)``."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def length_normalised_nll(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Llama 3's NLL regulariser: mean over pairs of the chosen response's per-token NLL."""
    return (-chosen_logps / chosen_tokens.clamp(min=1)).mean()
