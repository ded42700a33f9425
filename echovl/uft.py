"""UFT's math (Liu et al. 2025), pure torch: hints, a prefix of the expert solution appended to the prompt, shorter
and rarer as training goes on, and their NLL term. Its EasyR1 glue is :mod:`echovl.easyr1.uft`.

Per prompt and training step ``t``: split the solution into at most ``max_parts`` parts (:func:`solution_parts`),
draw ``k ~ Binomial(parts, p(t))`` (:func:`draw_hint_parts`, with :func:`hint_probability` ``p(t)``), and append
the first ``k`` parts to the prompt after the chat template's assistant start (:func:`append_hints`). Every
rollout of the prompt continues from the same hint. The draw is a function of ``(seed, t, prompt)`` alone, so
it is the same on every rank, in every process and after a resume from a checkpoint.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

import torch

from .loss import check_same_shape

__all__ = [
    "HINT_SPLITS",
    "append_hints",
    "draw_hint_parts",
    "hint_nll",
    "hint_probability",
    "hint_uniforms",
    "solution_parts",
    "split_units",
]

HINT_SPLITS = ("lines", "sentences")
"""How a solution is cut into units before they are grouped into parts."""

_UNIT_PATTERNS = {
    # a line with the newlines that end it (blank lines join the line before them)
    "lines": re.compile(r"[^\n]*\n*"),
    # a sentence: up to a '.', '!' or '?' followed by white space (kept), or up to the end of its line
    "sentences": re.compile(r"[^\n]*?(?:[.!?](?=\s)\s*|\n+|$)"),
}


def hint_probability(step: int, *, low: float = 0.05, high: float = 0.95, total_steps: int = 300) -> float:
    """``p(t) = low + (high - low) / 2 * (1 + cos(pi * t / T))`` for ``0 <= t <= T``, and 0 (no hint) for ``t > T``.

    ``p(0) = high``, ``p(T / 2) = (low + high) / 2``, ``p(T) = low``. ``t`` is the training step (EasyR1's
    ``global_step``, 1 on the first step, as UFT's ``timestep``), ``T`` UFT's ``T_hint`` (300).
    """
    if step > total_steps:
        return 0.0
    return low + (high - low) / 2 * (1 + math.cos(math.pi * step / total_steps))


def split_units(text: str, split: str = "lines") -> list[str]:
    """Cut ``text`` into lines or sentences; ``"".join(units) == text`` and no unit is empty."""
    return [m.group(0) for m in _UNIT_PATTERNS[split].finditer(text) if m.group(0)]


def solution_parts(text: str, *, split: str = "lines", max_parts: int = 5) -> list[str]:
    """The parts a hint is made of: the units of ``text`` (:func:`split_units`) in ``min(max_parts, units)``
    consecutive groups of about equal numbers of units, cut at unit ``round(i * units / parts)`` (as UFT cuts
    its hint lists). ``"".join(parts) == text``; no part is empty; an empty text has no parts."""
    units = split_units(text, split)
    num = min(max_parts, len(units))
    if num == 0:
        return []
    cuts = [round(i * len(units) / num) for i in range(num + 1)]
    return ["".join(units[cuts[i] : cuts[i + 1]]) for i in range(num)]


def hint_uniforms(count: int, *, seed: int, step: int, key: str) -> list[float]:
    """``count`` numbers in [0, 1), a function of ``(seed, step, key)`` only: SHA-256 of the four values, the
    first 53 bits of each digest. The same on every machine, process and Python version."""
    out = []
    for index in range(count):
        digest = hashlib.sha256(f"echovl.hint|{seed}|{step}|{index}|{key}".encode()).digest()
        out.append((int.from_bytes(digest[:8], "big") >> 11) / 2.0**53)
    return out


def draw_hint_parts(num_parts: int, probability: float, *, seed: int, step: int, key: str) -> int:
    """``k ~ Binomial(num_parts, probability)``: the number of the ``num_parts`` draws of :func:`hint_uniforms`
    below ``probability`` (UFT draws one Bernoulli per part and sums them). ``key`` names the prompt."""
    return sum(u < probability for u in hint_uniforms(num_parts, seed=seed, step=step, key=key))


def append_hints(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    hints: Sequence[Sequence[int]],
    *,
    max_length: int,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append each row's hint tokens to its left-padded prompt, left-padded again to ``max_length``.

    The hint tokens are real prompt tokens: attention mask 1, position ids continuing from the prompt's last
    position by 1 per token on every position row (text positions [B, P], and Qwen2-VL's mrope rows
    [B, C, P], whose text tokens after the last image advance together), exactly what computing the
    positions of the longer prompt from scratch gives. Padding is as EasyR1's ``postprocess_data`` pads:
    ``pad_token_id``, mask 0, position 0.

    Args:
        input_ids, attention_mask: [B, P] left-padded prompts.
        position_ids: [B, P] or [B, C, P].
        hints: per row, the hint's token ids (may be empty).
        max_length: width of the result (EasyR1's ``data.max_prompt_length``).
        pad_token_id: the tokenizer's pad id.

    Returns:
        ``(input_ids, attention_mask, position_ids, hint_length)``: [B, max_length] (positions [B, (C,)
        max_length]) and [B] long, the number of hint tokens at the end of each prompt.

    Raises:
        ValueError: a prompt and its hint do not fit in ``max_length``, or a prompt is not left-padded.
    """
    if len(hints) != input_ids.shape[0]:
        raise ValueError(f"{len(hints)} hints for {input_ids.shape[0]} prompts")
    rows = []
    lengths = []
    for row, hint in enumerate(hints):
        valid = int(attention_mask[row].sum())
        start = input_ids.shape[1] - valid
        if valid == 0 or not bool(attention_mask[row, start:].all()):
            raise ValueError(f"prompt {row} is empty or not left-padded (its attention mask must be 0...0 1...1)")
        hint = torch.as_tensor(list(hint), dtype=input_ids.dtype)
        total = valid + hint.numel()
        if total > max_length:
            raise ValueError(
                f"prompt {row}: {valid} prompt tokens and a {hint.numel()}-token hint do not fit in {max_length}"
            )
        positions = position_ids[row, ..., start:]
        steps = torch.arange(1, hint.numel() + 1, dtype=positions.dtype)
        hint_positions = positions[..., -1:] + steps  # broadcasts over the mrope rows
        pad = max_length - total
        rows.append(
            (
                torch.cat([input_ids.new_full((pad,), pad_token_id), input_ids[row, start:], hint]),
                torch.cat(
                    [
                        attention_mask.new_zeros(pad),
                        attention_mask[row, start:],
                        attention_mask.new_ones(hint.numel()),
                    ]
                ),
                torch.cat([positions.new_zeros((*positions.shape[:-1], pad)), positions, hint_positions], dim=-1),
            )
        )
        lengths.append(hint.numel())
    ids, mask, positions = (torch.stack([r[i] for r in rows]) for i in range(3))
    return ids, mask, positions, torch.tensor(lengths, dtype=torch.long)


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
    check_same_shape(log_probs, mask, "mask")
    mask = mask.bool()
    total = torch.where(mask, -log_probs, torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)).sum()
    return total, mask.sum()
