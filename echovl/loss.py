"""The echo term: negative log-likelihood of the clip tokens, from log-probs the update computes anyway."""

from __future__ import annotations

import torch

__all__ = ["echo_nll"]


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
