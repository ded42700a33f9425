"""EchoRL's loss: the NLL of the EchoClips, computed from the log-probs the update already has.

Every function takes the log-probs of one forward (``log pi(o_t | q, o_<t)`` at the rollout temperature,
differentiable) and returns masked sums; the caller normalises them the way its framework normalises its own loss
(:func:`echo_term`). The base methods' losses are in :mod:`echovl.luffy` and :mod:`echovl.uft`.
"""

from __future__ import annotations

import torch

__all__ = ["check_same_shape", "echo_nll", "echo_term", "weighted_echo_nll"]


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
    check_same_shape(log_probs, mask, "mask")
    mask = mask.bool()
    tokens = mask.sum(dim=-1)
    has_clip = tokens > 0
    nll_sum = torch.where(mask, -log_probs, torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)).sum(-1)
    total = (nll_sum / tokens.clamp(min=1).to(log_probs.dtype)).sum()  # rows without a clip add 0 / 1
    return total, has_clip.sum()


def weighted_echo_nll(log_probs: torch.Tensor, token_weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum of per-clip mean NLLs, for any clips (one per row, or several, possibly nested).

    ``total = sum_t w_t * (-log_probs_t)`` with ``w_t = sum over the clips c holding token t of weight_c / length_c``
    (:attr:`echovl.clip.EchoClips.token_weight`), which equals ``sum_c weight_c * mean NLL(c)``.

    Args:
        log_probs: [B, T] log pi(o_t | q, o_<t) of the response tokens (differentiable).
        token_weight: [B, T] float, 0 outside every clip.

    Returns:
        ``total``, a scalar in ``log_probs``' dtype. Tokens of weight 0 add exactly 0 (even where ``log_probs`` is
        not finite).
    """
    check_same_shape(log_probs, token_weight, "token_weight")
    weight = token_weight.to(log_probs.dtype)
    zero = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
    return torch.where(weight != 0, -log_probs * weight, zero).sum()


def echo_term(
    log_probs: torch.Tensor, token_weight: torch.Tensor, *, coef: float, clip_weight: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The echo term of some rows: ``coef * sum_t w_t * (-log_probs_t) / clip_weight``.

    ``clip_weight`` is J_echo's denominator as the caller's framework needs it for these rows: the summed clip weight
    (the number of clips under ``max`` selection) of everything one optimizer step averages over, divided by what
    the framework's own averaging multiplies back (EasyR1: FSDP averages gradients over ``world_size`` ranks, so
    ``global clip weight / world_size``). Summed over the step's micro-batches and ranks, the terms then make
    ``coef x`` (the weighted mean over the step's clips of each clip's mean NLL), whatever the micro-batching.

    Args:
        log_probs: [B, T] log pi(o_t | q, o_<t) of the response tokens (differentiable), at the rollout temperature.
        token_weight: [B, T] :attr:`echovl.clip.EchoClips.token_weight` of these rows.
        coef: λ of this training step (the schedule's value, :meth:`echovl.config.EchoConfig.coef_at`).
        clip_weight: the denominator (> 0).

    Returns:
        ``(term, total)``: the term to add to the loss, and ``total = sum_t w_t * (-log_probs_t)`` detached (for
        the ``echo/loss`` metric).
    """
    total = weighted_echo_nll(log_probs, token_weight)
    return total * (coef / clip_weight), total.detach()


def check_same_shape(log_probs: torch.Tensor, other: torch.Tensor, name: str) -> None:
    """``ValueError`` unless ``other`` has ``log_probs``' shape (naming ``other``)."""
    if log_probs.shape != other.shape:
        raise ValueError(
            f"log_probs and {name} must have the same shape, got {tuple(log_probs.shape)} and {tuple(other.shape)}"
        )
