"""Reasoning steps: per-vocabulary lookup tables and the per-token step index.

A response is split into reasoning steps at delimiter tokens (by default any token whose text contains
``"\\n"``). Everything here is a table lookup plus a cumulative sum, so it runs on whatever device the ids
are on, with no Python loop over tokens.

Reasoning markers (:data:`REASONING_MARKERS`, ``<think>`` and ``</think>``) are text, like any other token, and
split steps only through their text (so by default never: they hold no newline). Qwen3's tokenizers add them as
single non-special tokens, Qwen2.5's spell them with ordinary BPE pieces (the newline after them merged into
``">\\n"``); treating them as text gives the same steps and the same text tokens for the same response text under
both, so a response's step entropies mean the same thing whatever the backbone. In a ``<think>`` block with one
step per line, the markers sit in short steps of their own (``"<think>\\n"``, ``"</think>\\n"``), which the
entropy ranking judges like any other step. They stay text even where a tokenizer flags them special: dropping
them from the text mask would make the steps' token counts and entropies depend on the tokenizer's flags rather
than on what the model wrote.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "REASONING_MARKERS",
    "VISION_TOKENS",
    "delimiter_table",
    "special_table",
    "step_index",
    "step_spans",
    "text_mask",
    "vision_table",
]

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL special tokens that stand for images and videos, not text."""

REASONING_MARKERS = ("<think>", "</think>")
"""Tokens that open and close a reasoning block: always text, never special (see the module docstring)."""


def _tokenizer(tokenizer_or_processor):
    """Accept a tokenizer or a multimodal processor that carries one."""
    if not hasattr(tokenizer_or_processor, "convert_ids_to_tokens") and hasattr(tokenizer_or_processor, "tokenizer"):
        return tokenizer_or_processor.tokenizer
    return tokenizer_or_processor


def _table_size(tokenizer, vocab_size: int | None) -> int:
    size = len(tokenizer)
    if vocab_size is not None:
        if vocab_size < size:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer's {size} tokens")
        size = vocab_size
    return size


def _special_ids(tokenizer) -> set[int]:
    """The tokenizer's special tokens, less :data:`REASONING_MARKERS` (text whatever their flag)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special)
    return {i for i in ids if tokenizer.convert_ids_to_tokens(i) not in REASONING_MARKERS}


def delimiter_table(
    tokenizer, delimiters: Sequence[str] = ("\n",), *, vocab_size: int | None = None
) -> torch.BoolTensor:
    """``table[token_id]`` is True when the token's own text contains one of ``delimiters``.

    Each token is decoded on its own. With byte-level BPE a newline is often merged with what precedes it
    (``".\\n"``, ``")\\n\\n"``), and those tokens count. A token holding only part of a multi-byte character
    decodes to U+FFFD; that replacement character never matches, so such a token counts only if a whole
    delimiter is also inside it (``b"\\x80\\n"`` ends a step, ``b"\\xe3\\x80"`` never does). Special tokens
    (``<|im_end|>``, vision tokens, ...) are never delimiters. :data:`REASONING_MARKERS` are text: with
    ``delimiters=("\\n", "</think>")`` Qwen3's one-token ``</think>`` ends a step (Qwen2.5 spells it in pieces,
    none of which contains it).

    Args:
        tokenizer: a Hugging Face tokenizer, or a processor that has ``.tokenizer``.
        delimiters: non-empty strings that end a step (checked where they enter: ``EchoConfig.delimiters``).
        vocab_size: length of the table when the model's vocabulary is larger than the tokenizer's (extra
            rows are False).
    """
    if isinstance(delimiters, str):
        delimiters = (delimiters,)
    tokenizer = _tokenizer(tokenizer)
    size = _table_size(tokenizer, vocab_size)
    n = len(tokenizer)
    texts = tokenizer.batch_decode(
        [[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    table = torch.zeros(size, dtype=torch.bool)
    hits = [i for i, text in enumerate(texts) if any(d in text for d in delimiters)]
    if hits:
        table[torch.tensor(hits, dtype=torch.long)] = True
    special = [i for i in _special_ids(tokenizer) if 0 <= i < size]
    if special:
        table[torch.tensor(special, dtype=torch.long)] = False
    return table


def vision_table(tokenizer, *, vocab_size: int | None = None) -> torch.BoolTensor:
    """``table[token_id]`` is True for the vision special tokens in :data:`VISION_TOKENS`.

    Tokens are found by name, so a text-only tokenizer that lacks them gives an all-False table.
    """
    tokenizer = _tokenizer(tokenizer)
    table = torch.zeros(_table_size(tokenizer, vocab_size), dtype=torch.bool)
    vocab = tokenizer.get_vocab()
    for name in VISION_TOKENS:
        token_id = vocab.get(name)
        if token_id is not None and 0 <= token_id < table.numel():
            table[token_id] = True
    return table


def special_table(tokenizer, *, vocab_size: int | None = None) -> torch.BoolTensor:
    """``table[token_id]`` is True for every token that is not text: special and vision tokens (never
    :data:`REASONING_MARKERS`).

    ``~special_table[response_ids]`` is the text mask used for step entropies and the echo clip.
    """
    tokenizer = _tokenizer(tokenizer)
    table = vision_table(tokenizer, vocab_size=vocab_size)
    special = [i for i in _special_ids(tokenizer) if 0 <= i < table.numel()]
    if special:
        table[torch.tensor(special, dtype=torch.long)] = True
    return table


def _lookup(table: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``table[ids]`` where ``valid``, False elsewhere; ids outside the table read as False."""
    inside = valid & (ids >= 0) & (ids < table.numel())
    return table.to(ids.device)[torch.where(inside, ids, 0)] & inside


def step_index(
    response_ids: torch.Tensor, response_mask: torch.Tensor, is_delimiter: torch.Tensor
) -> torch.LongTensor:
    """0-based reasoning-step number of every response token, -1 where ``response_mask`` is 0.

    A step ends with a delimiter token. A run of consecutive delimiter tokens closes a single step, so no
    step is made of delimiters only (``"a\\n\\n\\nb"`` has two steps). Tokens after the last delimiter form the
    last step. "Consecutive" is among valid tokens: masked positions inside a response are skipped.

    Args:
        response_ids: [B, T] token ids.
        response_mask: [B, T], nonzero for response tokens.
        is_delimiter: [vocab] bool, from :func:`delimiter_table`.
    """
    if response_ids.shape != response_mask.shape or response_ids.dim() != 2:
        raise ValueError(
            f"response_ids and response_mask must both be [B, T], got {tuple(response_ids.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    valid = response_mask.bool()
    if valid.shape[1] == 0:
        return torch.empty(valid.shape, dtype=torch.long, device=valid.device)
    delim = _lookup(is_delimiter.bool(), response_ids, valid)
    # A token starts a new step when it is not a delimiter and the valid token before it is one; the step of a
    # token is the number of starts up to it. With right padding (the usual layout) the valid token before t is
    # t - 1; where a masked position lies inside a response, it is the last valid position before t.
    if not bool((valid[:, 1:] & ~valid[:, :-1]).any()):
        after_delimiter = torch.zeros_like(delim)
        after_delimiter[:, 1:] = delim[:, :-1]
    else:
        positions = torch.arange(response_ids.shape[1], device=response_ids.device)
        last_valid = torch.cummax(torch.where(valid, positions, -1), dim=1).values
        previous = torch.nn.functional.pad(last_valid[:, :-1], (1, 0), value=-1)
        after_delimiter = delim.gather(1, previous.clamp(min=0)) & (previous >= 0)
    starts = valid & ~delim & after_delimiter
    return starts.long().cumsum(dim=1).masked_fill_(~valid, -1)


def step_spans(row_steps: Sequence[int]) -> list[tuple[int, int]]:
    """The ``[start, end)`` token span of each step of one response, from its row of :func:`step_index`: entry ``s``
    is step ``s`` (steps are contiguous runs of tokens numbered from 0); positions marked -1 belong to no step."""
    spans: dict[int, list[int]] = {}
    for position, step in enumerate(row_steps):
        if step >= 0:
            spans.setdefault(step, [position, position + 1])[1] = position + 1
    return [(spans[step][0], spans[step][1]) for step in sorted(spans)]


def text_mask(response_ids: torch.Tensor, response_mask: torch.Tensor, non_text: torch.Tensor) -> torch.BoolTensor:
    """[B, T] True for response tokens that are text, i.e. not marked in ``non_text`` (from
    :func:`special_table` or :func:`vision_table`)."""
    valid = response_mask.bool()
    return valid & ~_lookup(non_text.bool(), response_ids, valid)
