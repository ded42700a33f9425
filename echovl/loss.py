"""Loss terms computed from the log-probs the update already has: EchoRL's clip NLL, and beside it the math of
the base methods that learn from expert solutions (LUFFY's policy shaping, UFT's hint NLL).

Every function takes the log-probs of one forward (``log pi(o_t | q, o_<t)`` at the rollout temperature,
differentiable) and returns per-token losses or masked sums; the caller aggregates and normalises them the way
its framework normalises its own loss.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "echo_nll",
    "hint_nll",
    "policy_shaping",
    "shaped_pg_loss",
    "shaping_weight",
    "unclipped_pg_loss",
    "weighted_echo_nll",
]


def echo_nll(log_probs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip mean NLL, summed over clips.

    ``total`` is the sum, over rows with at least one masked token, of ``mean(-log_probs[mask])`` for that
    row; ``count`` is the number of such rows. The caller divides by the clip count of the whole
    mini-batch (all micro-batches and ranks), so every clip weighs the same whatever its length.

    Args:
        log_probs: [B, T] log pi(o_t | q, o_<t) of the response tokens (differentiable).
        mask: [B, T] bool, the clip tokens (``EchoClips.mask``).

    Returns:
        ``(total, count)``: a scalar in ``log_probs``' dtype, and a scalar long tensor.
    """
    _check_same_shape(log_probs, mask, "mask")
    mask = mask.bool()
    tokens = mask.sum(dim=-1)
    has_clip = tokens > 0
    nll_sum = torch.where(mask, -log_probs, torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)).sum(-1)
    total = (nll_sum / tokens.clamp(min=1).to(log_probs.dtype)).sum()  # rows without a clip add 0 / 1
    return total, has_clip.sum()


def weighted_echo_nll(log_probs: torch.Tensor, token_weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum of per-clip mean NLLs, for several (possibly nested) clips per row.

    ``total = sum_t w_t * (-log_probs_t)`` with ``w_t = sum over the clips c holding token t of
    weight_c / length_c`` (:attr:`echovl.clip.EchoClips.token_weight`), which equals
    ``sum_c weight_c * mean NLL(c)``. The caller divides by the summed clip weight of the whole mini-batch
    (:func:`echovl.clip.row_clip_weight`, all micro-batches and ranks).

    Args:
        log_probs: [B, T] log pi(o_t | q, o_<t) of the response tokens (differentiable).
        token_weight: [B, T] float, 0 outside every clip.

    Returns:
        ``total``, a scalar in ``log_probs``' dtype. Tokens of weight 0 add exactly 0 (even where
        ``log_probs`` is not finite).
    """
    if log_probs.shape != token_weight.shape:
        raise ValueError(
            f"log_probs and token_weight must have the same shape, got {tuple(log_probs.shape)} and "
            f"{tuple(token_weight.shape)}"
        )
    weight = token_weight.to(log_probs.dtype)
    zero = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
    return torch.where(weight != 0, -log_probs * weight, zero).sum()


def policy_shaping(log_probs: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """LUFFY's shaping function of the token probability: ``f(p) = p / (p + gamma)`` with ``p = exp(log_probs)``.

    Computed as ``sigmoid(log p - log gamma)`` (the same value, finite for any log-prob, ``-inf`` included).
    """
    _check_gamma(gamma)
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
    _check_same_shape(log_probs, advantages, "advantages")
    return -advantages * policy_shaping(log_probs, gamma)


def shaping_weight(log_probs: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """The factor policy shaping puts on ``grad log p``: ``p * f'(p) = gamma * p / (p + gamma)^2`` (a metric)."""
    shaped = policy_shaping(log_probs, gamma)
    return shaped * (1 - shaped)


def unclipped_pg_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Per-token ``-A * ratio`` with ``ratio = exp(log_probs - old_log_probs)``: PPO's objective without its
    clipping (LUFFY's release trains its on-policy tokens so). The log-ratio is clamped to [-20, 20] before
    ``exp``, as EasyR1 does, so that an extreme token cannot overflow."""
    _check_same_shape(log_probs, old_log_probs, "old_log_probs")
    _check_same_shape(log_probs, advantages, "advantages")
    return -advantages * torch.exp(torch.clamp(log_probs - old_log_probs, -20.0, 20.0))


def hint_nll(log_probs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """UFT's hint term: the summed NLL of the hint tokens, and their number.

    ``total = sum(-log_probs[mask])``, ``count = mask.sum()``. The caller divides ``total`` by the hint-token
    count of the whole mini-batch (all micro-batches and ranks), so the term is the mean NLL over the hint
    tokens, and adds ``beta`` times it to the loss.

    Args:
        log_probs: [B, T] log pi(h_t | q, h_<t) of the hint tokens (the prompt's last tokens), differentiable.
        mask: [B, T] bool, the hint tokens.

    Returns:
        ``(total, count)``: a scalar in ``log_probs``' dtype, and a scalar long tensor.
    """
    _check_same_shape(log_probs, mask, "mask")
    mask = mask.bool()
    total = torch.where(mask, -log_probs, torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)).sum()
    return total, mask.sum()


def _check_same_shape(log_probs: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if log_probs.shape != other.shape:
        raise ValueError(
            f"log_probs and {name} must have the same shape, got {tuple(log_probs.shape)} and {tuple(other.shape)}"
        )


def _check_gamma(gamma: float) -> None:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"the policy-shaping gamma must be a finite number > 0, got {gamma!r}")
