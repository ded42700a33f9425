"""LUFFY on EasyR1, the glue (LUFFY's math is :mod:`echovl.luffy`): one expert row per group, LUFFY's advantage,
policy shaping on the expert tokens.

Driver side (:class:`ExpertRollout`, wrapped around the worker group's ``generate_sequences`` for training
batches only): vLLM generates ``n - 1`` rollouts per prompt (``meta_info["n"]``, which EasyR1's rollout applies
to its sampling parameters), and each group gets its expert row: the prompt's ``solution`` as a response
(:func:`echovl.luffy.expert_responses`, EOS appended, laid out exactly like a vLLM response). A trace that does
not fit ``data.max_response_length`` is never truncated: its group gets an ``n``-th rollout instead, from one
more generation call over those prompts with ``n = 1`` and the sampling seed ``seed + n - 1``. vLLM seeds child
``k`` of a request with ``seed + k``, so that rollout is exactly the one an ``n``-rollout call would have made
(a second request with the same seed would only repeat the first rollout). The batch then has EasyR1's size
and row layout, plus ``expert_row`` ([B] bool). The reward function scores the expert row like any rollout,
and :func:`luffy_advantages` replaces EasyR1's GRPO advantage with LUFFY's ``r - mean(r)`` over the whole
group (``guidance.adv_std: true`` keeps EasyR1's).

Actor side (:func:`luffy_pg_loss`, for micro-batches holding an expert row): the on-policy tokens keep
EasyR1's own PPO loss (``compute_policy_loss`` over their mask; or ``-A * ratio`` without clipping with
``guidance.clip_on_policy: false``), the expert tokens get ``-A * f(p)`` (:func:`echovl.luffy.shaped_pg_loss`):
no ratio, no clipping. Both are averaged together the way ``loss_avg_mode`` averages EasyR1's loss over the
micro-batch's response tokens, so EasyR1's scaling to the mini-batch applies unchanged. A micro-batch without
an expert row runs EasyR1's ``compute_policy_loss`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from verl.protocol import DataProto, pad_dataproto_to_divisor, unpad_dataproto
from verl.trainer.core_algos import average_loss, compute_policy_loss
from verl.utils import torch_functional as VF

from ..config import GuidanceConfig
from ..echo import group_ids
from ..luffy import (
    encode_trace,
    expert_responses,
    group_advantages,
    policy_shaping,
    shaped_pg_loss,
    shaping_weight,
    unclipped_pg_loss,
)

__all__ = [
    "EXPERT_ROW",
    "ExpertRollout",
    "expert_metrics",
    "luffy_advantages",
    "luffy_pg_loss",
]

EXPERT_ROW = "expert_row"
"""Batch key: [B] bool, the row is its group's expert trace (not sampled from the policy)."""

_ROLLOUT_KEYS = {"prompts", "responses", "input_ids", "attention_mask", "response_mask", "position_ids"}
"""The tensors EasyR1's vLLM rollout returns: an expert row has each of them."""


@dataclass
class ExpertStats:
    """What the expert rows of one step looked like (for the ``luffy/*`` metrics)."""

    groups: int = 0
    expert_rows: int = 0
    too_long: int = 0
    extra_rollouts: int = 0


class ExpertRollout:
    """Generates a training batch with one expert row per group (see the module docstring).

    Args:
        tokenizer: the run's tokenizer (encodes the traces).
        n: ``worker.rollout.n``, rows per group (>= 2, checked by the config: ``check_guidance``).
        seed: ``worker.rollout.seed``, vLLM's sampling seed.
        world_size: ranks ``generate_sequences`` splits a batch over (the extra call is padded to it).
    """

    def __init__(self, tokenizer, *, n: int, seed: int | None, world_size: int):
        self.tokenizer = tokenizer
        self.n = n
        self.seed = seed
        self.world_size = world_size
        self.stats = ExpertStats()

    def _eos(self, meta_eos) -> int:
        """The trace's EOS: the tokenizer's (as LUFFY) when the rollout stops on it, else the rollout's first."""
        stops = list(meta_eos) if isinstance(meta_eos, (list, tuple)) else [meta_eos]
        own = self.tokenizer.eos_token_id
        return own if own in stops or stops[0] is None else int(stops[0])

    def __call__(
        self, generate: Callable[[DataProto], DataProto], gen_batch: DataProto, solutions: Sequence
    ) -> DataProto:
        """``n - 1`` rollouts and the expert row (or an ``n``-th rollout) per prompt, prompt-major like vLLM."""
        size = len(gen_batch)
        if len(solutions) != size:
            raise ValueError(f"{len(solutions)} solutions for {size} prompts")
        prompts = gen_batch.batch
        raw = gen_batch.non_tensor_batch["raw_prompt_ids"]
        traces = []
        for row, solution in enumerate(solutions):
            if not isinstance(solution, str) or not solution.strip():
                start = self.tokenizer.decode(list(raw[row]))[-120:]
                raise ValueError(f"LUFFY: empty or missing expert solution for the prompt ending {start!r}")
            traces.append(encode_trace(self.tokenizer, solution, self.tokenizer.decode(list(raw[row]))))
        multi_modal = gen_batch.non_tensor_batch.get("multi_modal_data")

        out = generate(_with_meta(gen_batch, n=self.n - 1))
        unexpected = set(out.batch.keys()) - _ROLLOUT_KEYS
        if unexpected:
            raise NotImplementedError(f"LUFFY: the rollout returned tensors an expert row cannot have: {unexpected}")
        length = out.batch["responses"].shape[1]
        eos = self._eos(out.meta_info.get("eos_token_id", self.tokenizer.eos_token_id))
        pad = out.meta_info.get("pad_token_id", self.tokenizer.pad_token_id)
        responses, response_mask, fits = expert_responses(traces, eos_token_id=eos, pad_token_id=pad, length=length)

        pieces = [out]
        expert_rows = fits.nonzero().flatten()
        pieces.append(
            _expert_data(prompts, expert_rows, responses, response_mask, multi_modal, like=out, meta=out.meta_info)
        )
        long_rows = (~fits).nonzero().flatten()
        if long_rows.numel():
            extra = gen_batch[long_rows.tolist()]
            seed = None if self.seed is None else self.seed + self.n - 1
            padded, pad_size = pad_dataproto_to_divisor(_with_meta(extra, n=1, seed=seed), self.world_size)
            pieces.append(unpad_dataproto(generate(padded), pad_size))
            self.stats.extra_rollouts += len(padded)
        for piece, is_expert in zip(pieces, (False, True, False)):
            piece.batch[EXPERT_ROW] = torch.full((len(piece),), is_expert, dtype=torch.bool)

        # prompt i: its n - 1 rollouts, then its expert row (or its extra rollout)
        last = torch.empty(size, dtype=torch.long)
        last[expert_rows] = len(out) + torch.arange(expert_rows.numel())
        last[long_rows] = len(out) + expert_rows.numel() + torch.arange(long_rows.numel())
        rollouts = torch.arange(size * (self.n - 1)).view(size, self.n - 1)
        order = torch.cat([rollouts, last.unsqueeze(1)], dim=1).flatten()
        batch = DataProto.concat(pieces)[order.tolist()]
        batch.meta_info = {k: v for k, v in out.meta_info.items() if k not in ("n", "seed")}
        for key in ("n", "seed"):
            if key in gen_batch.meta_info:
                batch.meta_info[key] = gen_batch.meta_info[key]
        self.stats.groups += size
        self.stats.expert_rows += int(fits.sum())
        self.stats.too_long += int(long_rows.numel())
        return batch


def _with_meta(data: DataProto, **meta) -> DataProto:
    """The same rows with extra ``meta_info`` (a shallow copy: the rollout may pop from its non-tensor dict)."""
    meta_info = dict(data.meta_info)
    meta_info.update({k: v for k, v in meta.items() if v is not None})
    return DataProto(batch=data.batch, non_tensor_batch=dict(data.non_tensor_batch), meta_info=meta_info)


def _expert_data(prompts, rows, responses, response_mask, multi_modal, *, like: DataProto, meta) -> DataProto:
    """Expert rows laid out as EasyR1's vLLM rollout lays out a response (see ``vLLMRollout.generate_sequences``):
    left-padded prompt + right-padded response, positions continued from the last prompt position (every mrope
    row alike), attention mask = prompt mask + response mask."""
    rows_list = rows.tolist()
    input_ids = prompts["input_ids"][rows]
    attention_mask = prompts["attention_mask"][rows]
    position_ids = prompts["position_ids"][rows]
    responses, response_mask = responses[rows], response_mask[rows].to(attention_mask.dtype)
    delta = torch.arange(1, responses.shape[1] + 1, dtype=position_ids.dtype).expand(len(rows_list), -1)
    if position_ids.dim() == 3:  # qwen2vl mrope: (B, C, S)
        delta = delta.unsqueeze(1).expand(-1, position_ids.shape[1], -1)
    tensors = {
        "prompts": input_ids,
        "responses": responses.to(like.batch["responses"].dtype),
        "input_ids": torch.cat([input_ids, responses.to(input_ids.dtype)], dim=-1),
        "attention_mask": torch.cat([attention_mask, response_mask], dim=-1),
        "response_mask": response_mask.to(like.batch["response_mask"].dtype),
        "position_ids": torch.cat([position_ids, position_ids[..., -1:] + delta], dim=-1),
    }
    non_tensors = {}
    for key in like.non_tensor_batch:
        if key != "multi_modal_data" or multi_modal is None:
            raise NotImplementedError(f"LUFFY: the rollout returned a non-tensor '{key}' an expert row cannot have")
        non_tensors[key] = np.array([multi_modal[r] for r in rows_list], dtype=object)
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info=dict(meta))


def luffy_advantages(batch: DataProto, *, use_std: bool) -> None:
    """LUFFY's outcome advantage over whole groups (the expert row included): ``r - mean(r)`` per group, divided
    by the group's std only with ``use_std`` (then it equals EasyR1's GRPO advantage, which is kept as is)."""
    if use_std:
        return
    scores = batch.batch["token_level_rewards"].sum(-1)
    advantages = group_advantages(scores, group_ids(batch.non_tensor_batch["uid"]), use_std=False)
    token_advantages = advantages.unsqueeze(-1) * batch.batch["response_mask"]
    batch.batch["advantages"] = token_advantages
    batch.batch["returns"] = token_advantages.clone()


def expert_metrics(batch: DataProto, success: np.ndarray, stats: ExpertStats) -> dict[str, float]:
    """``luffy/*`` driver metrics: the expert rows' reward, accuracy, mean token probability (old policy) and
    length; groups whose trace was too long to use."""
    expert = batch.batch[EXPERT_ROW].bool()
    metrics = {
        "luffy/expert_rows": float(expert.sum()),
        "luffy/too_long": float(stats.too_long),
        "luffy/too_long_fraction": stats.too_long / max(stats.groups, 1),
    }
    if not expert.any():
        return metrics
    mask = batch.batch["response_mask"][expert].bool()
    metrics["luffy/expert_reward"] = float(batch.batch["token_level_scores"][expert].sum(-1).double().mean())
    metrics["luffy/expert_accuracy"] = float(np.asarray(success, dtype=np.float64)[expert.numpy()].mean())
    metrics["luffy/expert_length"] = float(mask.sum(-1).double().mean())
    metrics["luffy/expert_advantage"] = float(batch.batch["advantages"][expert][:, 0].double().mean())
    if "old_log_probs" in batch.batch.keys():
        probs = batch.batch["old_log_probs"][expert].double().exp()
        metrics["luffy/expert_token_prob"] = float(probs[mask].mean())
    return metrics


def luffy_pg_loss(
    config, model_inputs: dict[str, Any], log_probs: torch.Tensor, guidance: GuidanceConfig
) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
    """The PG loss of a micro-batch with expert rows, averaged like EasyR1's ``compute_policy_loss`` averages.

    ``token`` mode: the mean over all response tokens of the per-token losses (on-policy: EasyR1's PPO loss,
    expert: ``-A * f(p)``). ``seq`` mode: the mean over rows of each row's mean. Returns the loss, EasyR1's PG
    metrics (over the on-policy tokens) and the ``luffy/*`` metrics of the expert tokens.
    """
    expert = model_inputs[EXPERT_ROW].bool()
    response_mask = model_inputs["response_mask"]
    advantages = model_inputs["advantages"]
    on_mask = response_mask * (~expert).unsqueeze(-1).to(response_mask.dtype)
    off_mask = (response_mask * expert.unsqueeze(-1).to(response_mask.dtype)).bool()
    mode = config.loss_avg_mode
    if guidance.clip_on_policy:
        on_loss, pg_metrics = compute_policy_loss(
            old_log_probs=model_inputs["old_log_probs"],
            log_probs=log_probs,
            advantages=advantages,
            response_mask=on_mask,
            clip_ratio_low=config.clip_ratio_low,
            clip_ratio_high=config.clip_ratio_high,
            clip_ratio_dual=config.clip_ratio_dual,
            tau_positive=config.tau_positive,
            tau_negative=config.tau_negative,
            loss_type=config.loss_type,
            loss_avg_mode=mode,
        )
    else:
        losses = unclipped_pg_loss(log_probs, model_inputs["old_log_probs"], advantages)
        on_loss = average_loss(losses, on_mask, mode=mode)
        pg_metrics = {
            "ppo_kl": VF.masked_mean(model_inputs["old_log_probs"] - log_probs, on_mask).detach().item(),
            "entropy_loss": average_loss(-log_probs, on_mask, mode=mode).detach().item(),
            "pg_clipfrac_higher": 0.0,
            "pg_clipfrac_lower": 0.0,
        }
    shaped = torch.where(off_mask, shaped_pg_loss(log_probs, advantages, guidance.shaping_gamma), 0.0)
    off_tokens = off_mask.sum(-1)
    if mode == "token":
        on_tokens = on_mask.sum()
        loss = (on_loss * on_tokens + shaped.sum()) / (on_tokens + off_tokens.sum() + 1e-8)
    elif mode == "seq":  # average_loss: the mean over the micro-batch's rows of each row's mean
        loss = on_loss + (shaped.sum(-1) / (off_tokens + 1e-8)).sum() / response_mask.shape[0]
    else:
        raise NotImplementedError(f"LUFFY: unknown loss_avg_mode {mode!r}")
    if not bool(off_mask.any()):
        return loss, pg_metrics, {}
    with torch.no_grad():
        detached = log_probs.detach()
        extra = {
            "luffy/shaped_prob": policy_shaping(detached, guidance.shaping_gamma)[off_mask].double().mean().item(),
            "luffy/shaping_weight": shaping_weight(detached, guidance.shaping_gamma)[off_mask].double().mean().item(),
            "luffy/expert_pg_loss": (shaped.sum() / off_tokens.sum().clamp(min=1)).item(),
        }
    return loss, pg_metrics, extra
