"""Token entropy of the policy's next-token distribution, without a full-vocabulary fp32 copy."""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_CHUNK_SIZE", "token_entropy"]

_FLOAT32_MIN = torch.finfo(torch.float32).min

DEFAULT_CHUNK_SIZE = 128
"""Rows per chunk. For a 152k vocabulary a chunk's fp32 working set is ~2 x 78 MB, whatever the batch."""


def _chunk_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) - sum(p * z) = -sum(p * log p): a sum of non-negative terms, no cancellation."""
    log_p = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # the only upcast, one chunk at a time
    if torch.is_grad_enabled() and logits.requires_grad:
        return -(log_p.exp() * log_p.clamp(min=_FLOAT32_MIN)).sum(dim=-1)
    p = log_p.exp()
    log_p.clamp_(min=_FLOAT32_MIN)  # -inf logits (masked vocabulary) have p = 0 and add 0, not nan
    return -p.mul_(log_p).sum(dim=-1)  # in place: two chunk-sized fp32 buffers in all


def token_entropy(logits: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Entropy (nats, fp32) of ``softmax(logits)`` over the last dimension.

    ``H = logsumexp(z) - sum(softmax(z) * z)``, computed in fp32 whatever the input dtype. Rows are
    processed ``chunk_size`` at a time, so the extra memory is O(chunk_size x vocab) rather than a second
    copy of the logits. Apply the sampling temperature to ``logits`` before calling.

    Args:
        logits: [..., vocab], any float dtype, any device.
        chunk_size: rows (positions) per chunk.

    Returns:
        fp32 tensor of shape ``logits.shape[:-1]``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    lead_shape = logits.shape[:-1]
    try:
        flat = logits.view(-1, logits.shape[-1])
    except RuntimeError:  # e.g. logits[:, :-1] of a [B, T, V] tensor: never copy the whole thing
        return torch.stack([token_entropy(part, chunk_size) for part in logits.unbind(0)])
    rows = flat.shape[0]
    if rows <= chunk_size:
        return _chunk_entropy(flat).reshape(lead_shape)
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    for start in range(0, rows, chunk_size):
        out[start : start + chunk_size] = _chunk_entropy(flat[start : start + chunk_size])
    return out.reshape(lead_shape)
