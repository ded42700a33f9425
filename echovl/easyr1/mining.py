"""Driver-side EchoClip mining on an EasyR1 rollout batch.

After ``_balance_batch`` the rows of one prompt (one ``uid``) are scattered over the batch, and over the ranks
once dispatched, so clips are mined here, on the driver, on whole groups: ``uid`` strings become group ids,
the run's tokenizer gives the step delimiters and the non-text (special and vision) tokens, and
:func:`echovl.clip.mine_echo_clips` does the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..clip import EchoClips, GroupOutcomes, group_outcomes, mine_echo_clips
from ..config import EchoConfig
from ..steps import delimiter_table, special_table, step_index, text_mask

__all__ = ["EchoMiner", "MinedBatch", "group_ids", "verified_flags"]


def group_ids(uids: Sequence) -> torch.Tensor:
    """[B] long group id per row: rows with equal ``uid`` share an id (ids follow the sorted uids)."""
    _, inverse = np.unique(np.asarray(uids).astype(str), return_inverse=True)
    return torch.from_numpy(inverse.reshape(-1).astype(np.int64))


def verified_flags(scores: Sequence[float], echo: EchoConfig) -> torch.Tensor:
    """[B] bool: ``score[echo.success_key] >= echo.success_threshold``."""
    values = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"reward scores '{echo.success_key}' must be finite numbers, got {values[~np.isfinite(values)]}"
        )
    return torch.from_numpy(values >= echo.success_threshold)


@dataclass
class MinedBatch:
    """What mining found in a batch (all per-row tensors in the batch's row order)."""

    clips: EchoClips
    group: torch.Tensor  # [B] long
    steps: torch.Tensor  # [B, R] long, -1 outside the response
    text: torch.Tensor  # [B, R] bool
    verified: torch.Tensor  # [B] bool
    outcomes: GroupOutcomes


class EchoMiner:
    """Mines EchoClips on rollout batches of one tokenizer (its lookup tables are built once)."""

    def __init__(self, tokenizer, echo: EchoConfig):
        self.echo = echo
        self.is_delimiter = delimiter_table(tokenizer, echo.delimiters)
        self.non_text = special_table(tokenizer)

    def mine(
        self,
        responses: torch.Tensor,
        response_mask: torch.Tensor,
        entropy: torch.Tensor,
        verified: torch.Tensor,
        uids: Sequence,
        pool: torch.Tensor | None = None,
    ) -> MinedBatch:
        """Clips of a batch: ``responses``/``response_mask``/``entropy`` [B, R], ``verified`` [B], ``uids`` [B].

        ``pool`` ([B] bool, optional) limits the rows that may give a clip (LUFFY: not the expert row); groups
        still count as all-correct (``scope: degenerate``) by all their rows' ``verified`` flags.
        """
        group = group_ids(uids)
        steps = step_index(responses, response_mask, self.is_delimiter)
        text = text_mask(responses, response_mask, self.non_text)
        verified = verified.bool()
        eligible, scope = verified, self.echo.scope
        if pool is not None:
            eligible = verified & pool.bool()
            if scope == "degenerate":  # the all-correct groups, judged on every row, then the pool's rows
                _, index = torch.unique(group, return_inverse=True)
                all_correct = torch.ones(int(index.max()) + 1 if index.numel() else 0, dtype=torch.long)
                all_correct = all_correct.scatter_reduce(0, index, verified.long(), reduce="amin").bool()
                eligible, scope = eligible & all_correct[index], "all"
        clips = mine_echo_clips(
            entropy.float(),
            steps,
            text,
            eligible,
            group,
            **{**self.echo.mining_kwargs(), "scope": scope},
        )
        return MinedBatch(clips, group, steps, text, verified, group_outcomes(verified, group))


def clip_metrics(mined: Sequence[MinedBatch]) -> dict[str, float]:
    """``echo/clips`` (count), ``echo/clip_length`` and ``echo/clip_step_entropy`` (means over clips); with several
    clips per group (``echo.selection`` top_k / soft) also ``echo/clips_per_group`` and ``echo/clip_weight_max``
    (the mean over mined groups of their largest clip weight: 1 when one clip takes all, 1 / k when k share)."""
    lengths = torch.cat([m.clips.length.double() for m in mined]) if mined else torch.zeros(0)
    entropies = torch.cat([m.clips.step_entropy.double() for m in mined]) if mined else torch.zeros(0)
    metrics = {"echo/clips": float(lengths.numel())}
    if lengths.numel():
        metrics["echo/clip_length"] = float(lengths.mean())
        metrics["echo/clip_step_entropy"] = float(entropies.mean())
    if any(m.clips.token_weight is not None for m in mined):
        largest = [group_max(m.clips.group, m.clips.weight) for m in mined if len(m.clips)]
        largest = torch.cat(largest) if largest else torch.zeros(0)
        metrics["echo/clips_per_group"] = lengths.numel() / max(largest.numel(), 1)
        metrics["echo/clip_weight_max"] = float(largest.double().mean()) if largest.numel() else 0.0
    return metrics


def group_max(group: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The largest of ``values`` per distinct ``group`` (ascending group ids)."""
    _, index = torch.unique(group, sorted=True, return_inverse=True)
    out = torch.full((int(index.max()) + 1,), -torch.inf, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, index, values, reduce="amax")


def outcome_metrics(outcomes: GroupOutcomes) -> dict[str, float]:
    """``echo/degenerate_groups`` and ``echo/all_wrong_groups``: fractions of the groups."""
    groups = max(outcomes.num_groups, 1)
    return {
        "echo/degenerate_groups": outcomes.all_correct / groups,
        "echo/all_wrong_groups": outcomes.all_wrong / groups,
    }


def mean_entropy(entropy: torch.Tensor, response_mask: torch.Tensor) -> float:
    """``echo/entropy``: mean token entropy over the response tokens."""
    mask = response_mask.bool()
    return float(entropy.float()[mask].double().mean()) if mask.any() else 0.0
