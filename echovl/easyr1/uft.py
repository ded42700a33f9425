"""UFT on EasyR1, the glue (UFT's math is :mod:`echovl.uft`): hinted prompts before generation, the reward on
hint + response, the hint NLL in the update.

Driver side. :class:`HintMaker` transforms every training batch as the data loader yields it, before EasyR1
pops the generation inputs: per prompt, the solution's parts (:func:`echovl.uft.solution_parts`), ``k ~
Binomial(parts, p(t))`` of them (seeded by ``(data.seed, step, prompt)``), their tokens appended to the prompt
after the chat template's assistant start (:func:`echovl.uft.append_hints`: ``input_ids``, ``attention_mask``,
``position_ids``, mrope rows included, and vLLM's ``raw_prompt_ids``), and ``hint_length`` ([B] long) beside
them. All ``n`` rollouts of a prompt continue from its hint, and EasyR1's response is the generated part only,
so the PG term covers only generated tokens. A hint that does not fit ``data.max_prompt_length`` together with
its prompt loses parts from its end until it fits (``uft/hint_cut``). :func:`hinted_reward` scores each row on
the hint and the response together (a full hint holds the answer).

Actor side. :func:`forward_with_hints` gets the hint tokens' log-probs from the update's own forward: it widens
the response window that EasyR1's ``_forward_micro_batch`` takes log-probs over (``responses`` stands for the
last ``R`` tokens of ``input_ids``) by the micro-batch's longest hint, ``H``. The model computes logits for every
position anyway; on the padding-free path EasyR1 already turns all of them into log-probs and only slices them
off, and on the padded path the log-prob function gets the wider slice, computes the response part exactly as
before and the hint part only at the hint tokens (not over the whole ``[B, H]`` window). No extra forward.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from verl.protocol import DataProto

from ..config import GuidanceConfig
from ..uft import append_hints, draw_hint_parts, hint_probability, solution_parts

__all__ = ["HINT_LENGTH", "HintMaker", "HintStats", "forward_with_hints", "hint_window", "hinted_reward"]

HINT_LENGTH = "hint_length"
"""Batch key: [B] long, the number of hint tokens at the end of the row's prompt."""


@dataclass
class HintStats:
    """The hints of one training step (for the ``uft/*`` metrics)."""

    prompts: int = 0
    hinted: int = 0
    cut: int = 0
    parts: int = 0
    hint_parts: int = 0
    char_fraction: float = 0.0
    hint_tokens: int = 0
    probability: float = 0.0


def prompt_key(raw_prompt_ids, solution: str) -> str:
    """What names a prompt in the hint draws: a digest of its token ids and its solution."""
    digest = hashlib.sha256(np.asarray(list(raw_prompt_ids), dtype=np.int64).tobytes())
    digest.update(solution.encode("utf-8"))
    return digest.hexdigest()


class HintMaker:
    """Appends this step's hints to the prompts of a collated training batch (a dict, as the loader yields it).

    Args:
        tokenizer: the run's tokenizer.
        guidance: the ``guidance:`` section (``hint_*`` settings, ``solution_key``).
        seed: ``data.seed``: with the step and the prompt, it decides every draw.
        max_prompt_length: ``data.max_prompt_length``, the width of the prompt tensors.
        step: returns the training step the batch is for (EasyR1's ``global_step``, 1-based).
    """

    def __init__(
        self, tokenizer, guidance: GuidanceConfig, *, seed: int, max_prompt_length: int, step: Callable[[], int]
    ):
        self.tokenizer = tokenizer
        self.guidance = guidance
        self.seed = seed
        self.max_prompt_length = max_prompt_length
        self.step = step
        self.stats = HintStats()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        key = self.guidance.solution_key  # (the guide checked that the batch has it)
        step = int(self.step())
        g = self.guidance
        probability = hint_probability(step, low=g.hint_low, high=g.hint_high, total_steps=g.hint_steps)
        raw = batch["raw_prompt_ids"]
        valid = batch["attention_mask"].sum(-1).tolist()
        hints: list[list[int]] = []
        for row, solution in enumerate(batch[key]):
            if not isinstance(solution, str) or not solution.strip():
                start = self.tokenizer.decode(list(raw[row]))[-120:]
                raise ValueError(f"UFT: empty or missing expert solution for the prompt ending {start!r}")
            parts = solution_parts(solution, split=g.hint_split, max_parts=g.hint_max_parts)
            k = draw_hint_parts(len(parts), probability, seed=self.seed, step=step, key=prompt_key(raw[row], solution))
            drawn, ids = k, self._encode(parts, k)
            while k > 0 and valid[row] + len(ids) > self.max_prompt_length:  # cut from the end until it fits
                k -= 1
                ids = self._encode(parts, k)
            self.stats.cut += k < drawn
            hints.append(ids)
            self._count(parts, k, len(ids))
        self.stats.probability = probability
        out = dict(batch)
        ids, mask, positions, lengths = append_hints(
            batch["input_ids"],
            batch["attention_mask"],
            batch["position_ids"],
            hints,
            max_length=self.max_prompt_length,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        out.update(input_ids=ids, attention_mask=mask, position_ids=positions)
        out[HINT_LENGTH] = lengths
        new_raw = np.empty(len(hints), dtype=object)  # (np.array of equal-length lists would make a 2-D array)
        for row, hint in enumerate(hints):
            new_raw[row] = list(raw[row]) + hint
        out["raw_prompt_ids"] = new_raw
        return out

    def _encode(self, parts: list[str], k: int) -> list[int]:
        return list(self.tokenizer("".join(parts[:k]), add_special_tokens=False)["input_ids"]) if k else []

    def _count(self, parts: list[str], k: int, tokens: int) -> None:
        stats = self.stats
        stats.prompts += 1
        stats.hinted += k > 0
        stats.parts += len(parts)
        stats.hint_parts += k
        units = sum(len(p) for p in parts)
        stats.char_fraction += sum(len(p) for p in parts[:k]) / units if units else 0.0
        stats.hint_tokens += tokens

    def metrics(self) -> dict[str, float]:
        """``uft/*``: hint probability ``p(t)``, fraction of prompts with a hint, mean fraction of the solution
        (characters) and of its parts shown, mean hint tokens, hints cut to fit the prompt length."""
        stats, prompts = self.stats, max(self.stats.prompts, 1)
        return {
            "uft/hint_probability": stats.probability,
            "uft/hinted_prompts": stats.hinted / prompts,
            "uft/hint_fraction": stats.char_fraction / prompts,
            "uft/hint_parts": stats.hint_parts / prompts,
            "uft/hint_tokens": stats.hint_tokens / prompts,
            "uft/hint_cut": float(stats.cut),
        }


def hinted_reward(reward_fn, batch: DataProto) -> tuple[torch.Tensor, dict[str, list]]:
    """Score every row on its hint followed by its response, with the run's reward manager (a Ray handle).

    The reward manager decodes ``responses[:response_mask.sum()]``; it gets rows whose "response" is the hint
    tokens (the prompt's last ``hint_length`` tokens) and then the generated ones. The token-level scores come
    back at the last generated token, where EasyR1 puts them.

    Returns:
        ``(token_level_scores [B, R], reward_metrics)`` as ``compute_reward`` returns them.
    """
    hint = batch.batch[HINT_LENGTH].long()
    responses = batch.batch["responses"]
    lengths = batch.batch["response_mask"].sum(-1).long()
    width = int(hint.max()) if hint.numel() else 0
    if width == 0:
        return ray.get(reward_fn.compute_reward.remote(batch))
    prompts = batch.batch["prompts"]
    length = responses.shape[1]
    total = width + length
    columns = torch.arange(total).unsqueeze(0)
    # a row's hint goes first, then its response: position c holds hint token c (c < h) or response token c - h
    from_hint = columns < hint.unsqueeze(1)
    hint_index = (prompts.shape[1] - hint.unsqueeze(1) + columns).clamp(max=prompts.shape[1] - 1)
    response_index = (columns - hint.unsqueeze(1)).clamp(min=0, max=length - 1)
    ext = torch.where(from_hint, prompts.gather(1, hint_index), responses.gather(1, response_index))
    ext_mask = (columns < (hint + lengths).unsqueeze(1)).to(batch.batch["response_mask"].dtype)
    ext = torch.where(ext_mask.bool(), ext, int(batch.meta_info.get("pad_token_id") or 0))  # never decoded
    scored = DataProto.from_dict(
        tensors={"responses": ext, "response_mask": ext_mask},
        non_tensors=dict(batch.non_tensor_batch),
        meta_info=dict(batch.meta_info),
    )
    ext_scores, reward_metrics = ray.get(reward_fn.compute_reward.remote(scored))
    scores = torch.zeros(responses.shape, dtype=ext_scores.dtype)
    last = (lengths - 1).clamp(min=0)
    scores.scatter_(1, last.unsqueeze(1), ext_scores.gather(1, (hint + last).unsqueeze(1)))
    return scores, reward_metrics


def hint_window(hint_length: torch.Tensor) -> torch.Tensor:
    """[B, H] bool, ``H = max(hint_length)``: the hint tokens among the last ``H`` prompt positions (a row's
    ``h`` hint tokens are its last ``h`` prompt tokens, so its mask is the window's last ``h`` columns)."""
    width = int(hint_length.max()) if hint_length.numel() else 0
    return torch.arange(width, device=hint_length.device).unsqueeze(0) >= (width - hint_length).unsqueeze(1)


@contextlib.contextmanager
def _window_log_probs(actor, hint_mask: torch.Tensor) -> Iterator[None]:
    """While active, the actor's log-prob function, on the padded path ([B, H + R, V] logits), computes the
    response part as before and the hint part only at the hint tokens (zeros elsewhere)."""
    inner = actor.log_probs_from_logits
    width = hint_mask.shape[1]

    def log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 3:  # padding-free: EasyR1 computes every token's log-prob anyway
            return inner(logits, labels)
        response = inner(logits[:, width:], labels[:, width:])
        mask = hint_mask.to(logits.device)
        hint = torch.zeros(mask.shape, dtype=response.dtype, device=response.device)
        hint = hint.masked_scatter(mask, inner(logits[:, :width][mask], labels[:, :width][mask]).to(response.dtype))
        return torch.cat([hint, response], dim=1)

    actor.log_probs_from_logits = log_probs
    try:
        yield
    finally:
        actor.log_probs_from_logits = inner


def forward_with_hints(
    actor, model_inputs: dict[str, Any], temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward of the actor over a micro-batch: ``(log_probs [B, R], hint_log_probs [B, H], hint_mask [B, H])``.

    ``log_probs`` are exactly ``actor._forward_micro_batch``'s; ``hint_log_probs`` the log-probs (at the same
    temperature) of the hint tokens, which ``hint_mask`` marks (see the module docstring).
    """
    hint_mask = hint_window(model_inputs[HINT_LENGTH].long())
    width = hint_mask.shape[1]
    if width == 0:
        log_probs = actor._forward_micro_batch(model_inputs, temperature=temperature)
        return log_probs, log_probs.new_zeros((log_probs.shape[0], 0)), hint_mask
    input_ids = model_inputs["input_ids"]
    response_length = model_inputs["responses"].shape[-1]
    if width + response_length >= input_ids.shape[-1]:
        raise ValueError(f"a {width}-token hint leaves no prompt token before it (sequence {input_ids.shape[-1]})")
    widened = dict(model_inputs)
    widened["responses"] = input_ids[:, -(width + response_length) :]  # EasyR1 reads its width and its labels
    with _window_log_probs(actor, hint_mask):
        both = actor._forward_micro_batch(widened, temperature=temperature)
    hint_log_probs = torch.where(hint_mask.to(both.device), both[:, :width], 0.0)  # (padding-free: all computed)
    return both[:, width:], hint_log_probs, hint_mask
