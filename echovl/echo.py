"""The echo step: what every trainer does with a batch of rollouts before its update, written once.

Given the run's tokenizer and :class:`~echovl.config.EchoConfig`, :class:`EchoStep` builds the token lookup tables
once; then, per batch of rollouts (every row of whole groups, in any order), :meth:`EchoStep.mine` splits the
responses into steps (:func:`~echovl.steps.step_index`), masks the non-text tokens (:func:`~echovl.steps.text_mask`)
and mines the EchoClips with the config's selection (:func:`~echovl.clip.mine_echo_clips`). What it returns,
:class:`MinedBatch`, gives the per-row tensors the update needs (:meth:`MinedBatch.update_tensors`) and the trace
records (:meth:`MinedBatch.records`); :meth:`EchoStep.clip_metrics` the ``echo/clip*`` metrics.

Around it, each trainer: the verified flags (:func:`verified_flags`), the group outcomes and λ of the step
(:func:`~echovl.clip.group_outcomes`, :meth:`EchoConfig.coef_at <echovl.config.EchoConfig.coef_at>`), and in the
update :func:`echovl.loss.echo_term` with λ passed as an argument. The frameworks (:mod:`echovl.easyr1`,
:mod:`echovl.trl`) keep only what is specific to them: where the rows, scores and entropies are, and how ranks and
micro-batches normalise the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .clip import EchoClips, all_verified_rows, mine_echo_clips, row_clip_weight
from .config import EchoConfig
from .steps import delimiter_table, special_table, step_index, text_mask
from .traces import build_group_records, select_groups

__all__ = ["ECHO_CLIP_WEIGHT", "ECHO_WEIGHT", "EchoStep", "MinedBatch", "group_ids", "verified_flags"]

ECHO_WEIGHT = "echo_weight"
"""Batch key of the clip token weights ([B, T] float32, :attr:`echovl.clip.EchoClips.token_weight`; 0 outside every
clip): the rows' share of J_echo's numerator."""

ECHO_CLIP_WEIGHT = "echo_clip_weight"
"""Batch key of each row's summed clip weight ([B] float32, :func:`echovl.clip.row_clip_weight`; 1 per clip row
under ``max`` selection): the row's share of J_echo's denominator."""


def group_ids(prompt_ids: Sequence) -> torch.Tensor:
    """[B] long group id per row: rows with the same prompt id (EasyR1's ``uid`` strings, any value with a string
    form) share a group id; ids follow the sorted prompt ids."""
    _, inverse = np.unique(np.asarray(prompt_ids).astype(str), return_inverse=True)
    return torch.from_numpy(inverse.reshape(-1).astype(np.int64))


def verified_flags(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """[B] bool: a rollout is verified when its score (the reward's ``echo.success_key``) is ``>= threshold``; a NaN
    score (no score) is not verified."""
    return torch.as_tensor(scores) >= threshold


@dataclass
class MinedBatch:
    """What the echo step found in a batch (per-row tensors in the batch's row order)."""

    clips: EchoClips
    responses: torch.Tensor
    """[B, T] response token ids."""
    group: torch.Tensor
    """[B] group id of each row."""
    steps: torch.Tensor
    """[B, T] step index, -1 outside the response."""
    text: torch.Tensor
    """[B, T] bool, the text tokens of the response."""
    entropy: torch.Tensor
    """[B, T] fp32 token entropy."""
    verified: torch.Tensor
    """[B] bool."""

    def update_tensors(self, rows: slice = slice(None), width: int | None = None) -> dict[str, torch.Tensor]:
        """:data:`ECHO_WEIGHT` and :data:`ECHO_CLIP_WEIGHT` of ``rows`` (the first ``width`` response positions)."""
        weight = row_clip_weight(self.clips, self.responses.shape[0])
        return {ECHO_WEIGHT: self.clips.token_weight[rows, :width], ECHO_CLIP_WEIGHT: weight[rows]}

    def mean_entropy(self, rows: torch.Tensor | None = None) -> float:
        """``echo/entropy``: the mean token entropy over the response tokens (of the rows flagged in ``rows``)."""
        tokens = self.steps >= 0
        if rows is not None:
            tokens = tokens & rows.to(tokens.device).bool().unsqueeze(1)
        return float(self.entropy[tokens].double().mean()) if bool(tokens.any()) else 0.0

    def traced_groups(self, limit: int) -> list[int]:
        """Up to ``limit`` group ids to trace: groups with a clip first, then the others, each in id order."""
        return select_groups(self.group, self.clips, limit)

    def records(self, tokenizer, groups: Sequence[int], *, train_step: int, **rows: Any) -> list[tuple[dict, Any]]:
        """Trace records of ``groups`` (:func:`echovl.traces.build_group_records`); ``rows`` are its per-row
        arguments (``prompts``, ``answers``, ``rewards``, ``accuracy``, and optionally ``images``, ``group_names``,
        ``source``, ``expert``, ``hints``)."""
        return build_group_records(
            tokenizer,
            train_step=train_step,
            groups=groups,
            group=self.group,
            response_ids=self.responses,
            steps=self.steps,
            text_mask=self.text,
            entropy=self.entropy,
            verified=self.verified,
            clips=self.clips,
            **rows,
        )


class EchoStep:
    """Mines the EchoClips of rollout batches of one tokenizer, with the settings of one :class:`EchoConfig` (the
    lookup tables, :func:`~echovl.steps.delimiter_table` for ``config.delimiters`` and
    :func:`~echovl.steps.special_table`, are built once: it decodes the whole vocabulary)."""

    def __init__(self, tokenizer, config: EchoConfig, *, tables: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.config = config
        if tables is None:  # (a caller that keeps them per tokenizer, as the demo's loaded model, passes them)
            tables = delimiter_table(tokenizer, config.delimiters), special_table(tokenizer)
        self._tables = tables

    def tables(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """The delimiter and non-text (special + vision) lookup tables, on ``device`` (moved once)."""
        if self._tables[0].device != torch.device(device):
            self._tables = tuple(table.to(device) for table in self._tables)
        return self._tables

    def mine(
        self,
        responses: torch.Tensor,
        response_mask: torch.Tensor,
        entropy: torch.Tensor,
        verified: torch.Tensor,
        group: torch.Tensor,
        pool: torch.Tensor | None = None,
    ) -> MinedBatch:
        """The clips of a batch: ``responses``/``response_mask``/``entropy`` [B, T], ``verified``/``group`` [B].

        ``pool`` ([B] bool, optional) limits the rows that may give a clip (LUFFY: not the expert row); a group is
        still all-correct (``scope: degenerate``) by all its rows' ``verified`` flags.
        """
        is_delimiter, non_text = self.tables(responses.device)
        steps = step_index(responses, response_mask, is_delimiter)
        text = text_mask(responses, response_mask, non_text)
        verified, group = verified.to(responses.device).bool(), group.to(responses.device)
        kwargs = self.config.mining_kwargs()
        eligible = verified
        if pool is not None:
            eligible = verified & pool.to(verified.device).bool()
            if kwargs["scope"] == "degenerate":  # all-correct judged on every row, then only the pool's rows
                eligible, kwargs["scope"] = eligible & all_verified_rows(verified, group), "all"
        entropy = entropy.float()
        clips = mine_echo_clips(entropy, steps, text, eligible, group, **kwargs)
        return MinedBatch(clips, responses, group, steps, text, entropy, verified)

    def clip_metrics(self, batches: Sequence[MinedBatch]) -> dict[str, float]:
        """``echo/clips`` (count), ``echo/clip_length`` and ``echo/clip_step_entropy`` (means over the clips of
        ``batches``); with several clips per group (``echo.selection`` top_k / soft) also ``echo/clips_per_group``
        and ``echo/clip_weight_max`` (the mean over mined groups of their largest clip weight: 1 when one clip takes
        all, 1 / k when k share)."""
        clips = [b.clips for b in batches if len(b.clips)]
        metrics = {"echo/clips": float(sum(len(c) for c in clips))}
        if clips:
            metrics["echo/clip_length"] = float(torch.cat([c.length.double().cpu() for c in clips]).mean())
            metrics["echo/clip_step_entropy"] = float(torch.cat([c.step_entropy.double().cpu() for c in clips]).mean())
        if self.config.weighted:
            largest = torch.cat([_group_max(c.group, c.weight.double()).cpu() for c in clips] or [torch.zeros(0)])
            metrics["echo/clips_per_group"] = metrics["echo/clips"] / max(largest.numel(), 1)
            metrics["echo/clip_weight_max"] = float(largest.mean()) if largest.numel() else 0.0
        return metrics


def _group_max(group: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The largest of ``values`` per distinct ``group`` (ascending group ids)."""
    _, index = torch.unique(group, sorted=True, return_inverse=True)
    out = torch.full((int(index.max()) + 1,), -torch.inf, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, index, values, reduce="amax")
