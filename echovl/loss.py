"""The echo term: negative log-likelihood of the clip tokens, from log-probs the update computes anyway."""

from __future__ import annotations

import torch

__all__ = ["echo_nll", "weighted_echo_nll"]


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
    if log_probs.shape != mask.shape:
        raise ValueError(
            f"log_probs and mask must have the same shape, got {tuple(log_probs.shape)} and {tuple(mask.shape)}"
        )
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
