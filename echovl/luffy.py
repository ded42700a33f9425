"""LUFFY's math (Yan et al. 2025), pure torch; its EasyR1 glue is :mod:`echovl.easyr1.luffy`.

- The expert row: the prompt's expert solution laid out as one more rollout of its group.
- The group advantage LUFFY's release uses (``r - mean(r)``, without dividing by the standard deviation).
- Policy shaping on the expert tokens, ``-A * p / (p + gamma)``, and PPO's objective without clipping.

The expert trace is a response like any other: its tokens, then EOS, right-padded to the response width, with a
response mask over the tokens and the EOS (as EasyR1's vLLM rollout masks a generated response). A trace that
does not fit is never truncated: its group stays on-policy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .loss import check_same_shape

__all__ = [
    "encode_trace",
    "expert_responses",
    "group_advantages",
    "policy_shaping",
    "shaped_pg_loss",
    "shaping_weight",
    "unclipped_pg_loss",
]

THINK_OPEN = "<think>\n"


def encode_trace(tokenizer, solution: str, prompt: str = "") -> list[int]:
    """Token ids of an expert solution as a response to ``prompt`` (no special tokens added, no EOS).

    As LUFFY does, a solution starting with ``"<think>\\n"`` loses it when the prompt already ends with it
    (a chat template that opens the thinking block itself).
    """
    if prompt.endswith(THINK_OPEN) and solution.startswith(THINK_OPEN):
        solution = solution[len(THINK_OPEN) :]
    return list(tokenizer(solution, add_special_tokens=False)["input_ids"])


def expert_responses(
    traces: Sequence[Sequence[int]], *, eos_token_id: int, pad_token_id: int, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expert traces as response rows: ``trace + [EOS]`` (EOS not repeated if the trace ends with it),
    right-padded to ``length``.

    Returns:
        ``(responses, response_mask, fits)``: [N, length] long, [N, length] long (1 over the trace and its EOS),
        [N] bool. A trace whose tokens and EOS exceed ``length`` does not fit: its row is all padding, mask 0.
    """
    responses = torch.full((len(traces), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(traces), length), dtype=torch.long)
    fits = torch.zeros(len(traces), dtype=torch.bool)
    for row, trace in enumerate(traces):
        ids = list(trace)
        if not ids or ids[-1] != eos_token_id:
            ids.append(eos_token_id)
        if len(ids) > length:
            continue
        responses[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
        fits[row] = True
    return responses, mask, fits


def group_advantages(scores: torch.Tensor, group: torch.Tensor, *, use_std: bool, eps: float = 1e-6) -> torch.Tensor:
    """Outcome advantages over whole groups: ``r - mean_group(r)``, divided by ``std_group(r) + eps`` when
    ``use_std`` (then exactly EasyR1's GRPO: unbiased std). LUFFY's release uses ``use_std=False``.

    Args:
        scores: [B] each row's reward (the expert row's included).
        group: [B] group id of each row (equal ids = one prompt).
        use_std: divide by the group's standard deviation.

    Returns:
        [B] advantages in ``scores``' dtype.
    """
    if scores.dim() != 1 or group.shape != scores.shape:
        raise ValueError(f"scores and group must both be [B], got {tuple(scores.shape)} and {tuple(group.shape)}")
    _, index = torch.unique(group, return_inverse=True)
    num = int(index.max()) + 1 if index.numel() else 0
    size = torch.zeros(num, dtype=scores.dtype).index_add_(0, index, torch.ones_like(scores))
    mean = torch.zeros(num, dtype=scores.dtype).index_add_(0, index, scores) / size
    centred = scores - mean[index]
    if not use_std:
        return centred
    if bool((size < 2).any()):
        raise ValueError("dividing by the group standard deviation needs at least 2 rows per group")
    var = torch.zeros(num, dtype=scores.dtype).index_add_(0, index, centred**2) / (size - 1)
    return centred / (var.sqrt()[index] + eps)


def policy_shaping(log_probs: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """LUFFY's shaping function of the token probability: ``f(p) = p / (p + gamma)`` with ``p = exp(log_probs)``.

    Computed as ``sigmoid(log p - log gamma)`` (the same value, finite for any log-prob, ``-inf`` included).
    """
    return torch.sigmoid(log_probs - math.log(gamma))


def shaped_pg_loss(log_probs: torch.Tensor, advantages: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """LUFFY's loss on off-policy (expert) tokens, per token: ``-A * f(p)``, ``f(p) = p / (p + gamma)``.

    No ratio to an old policy and no clipping: the expert trace was not sampled from the policy. The gradient
    is ``-A * gamma * p / (p + gamma)^2 * grad log p`` (:func:`shaping_weight` times ``-A * grad log p``): tokens
    the policy finds unlikely (small ``p``) get a larger weight than plain importance sampling (``p``) gives
    them, and likely ones a smaller weight than SFT (1).

    Args:
        log_probs: [B, T] log pi_theta of the expert tokens at the rollout temperature (differentiable).
        advantages: [B, T] advantages (the expert row's group advantage on every token).
        gamma: the shaping constant (LUFFY: 0.1).

    Returns:
        [B, T] per-token losses; the caller masks and averages them like the on-policy loss.
    """
    check_same_shape(log_probs, advantages, "advantages")
    return -advantages * policy_shaping(log_probs, gamma)


def shaping_weight(log_probs: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """The factor policy shaping puts on ``grad log p``: ``p * f'(p) = gamma * p / (p + gamma)^2`` (a metric)."""
    shaped = policy_shaping(log_probs, gamma)
    return shaped * (1 - shaped)


def unclipped_pg_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Per-token ``-A * ratio`` with ``ratio = exp(log_probs - old_log_probs)``: PPO's objective without its
    clipping (LUFFY's release trains its on-policy tokens so). The log-ratio is clamped to [-20, 20] before
    ``exp``, as EasyR1 does, so that an extreme token cannot overflow."""
    check_same_shape(log_probs, old_log_probs, "old_log_probs")
    check_same_shape(log_probs, advantages, "advantages")
    return -advantages * torch.exp(torch.clamp(log_probs - old_log_probs, -20.0, 20.0))
