"""DAPO's online filtering and EchoRL: keeping the clips of the all-correct groups the filter drops.

DAPO (``algorithm.online_filtering``) drops every group whose rollouts all score alike, so the all-correct
groups (exactly the groups EchoRL exists for) never reach the actor. What EchoRL needs of such a group is one
rollout, the one holding its clip, and to find it, the token entropies of all of its rollouts. So:

1. ``_make_batch_data`` (EasyR1's, unchanged) fills the batch with the groups the filter keeps; the trainer
   records every scored round, and collects the all-correct groups it dropped.
2. :func:`plan_filtered_clips` gives ``slots`` of the batch's ``rollout_batch_size`` group slots to echo rows
   (one group slot holds ``rollout.n`` clips), so the batch keeps EasyR1's size and every divisibility rule:
   the batch handed to the workers shrinks by ``slots`` groups, and the update batch is full again.
3. Before ``update_actor`` the dropped groups get one no-grad forward (``compute_log_probs``, for their
   entropies), their clips are mined, and :func:`echo_rows` turns each clip's rollout into an update row with
   zero advantage and ``response_mask`` 0: no policy-gradient or KL term, and not counted in EasyR1's
   token-mean denominator, so the PG loss of the kept groups is exactly DAPO's. The clip tokens are supervised
   through ``echo_mask`` alone.

Cost per step: ``slots`` fewer DAPO groups (``ceil(clips / n)``, rounded up to the divisibility unit), a forward
over the dropped groups' rollouts, and the update's forward/backward over ``slots * n`` echo rows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from verl.protocol import DataProto

__all__ = ["FilteredPlan", "dropped_correct_groups", "echo_rows", "plan_filtered_clips", "rows_scores", "slot_unit"]


def rows_scores(rounds: Sequence[tuple[Sequence, Sequence[float]]], uids: Sequence) -> np.ndarray:
    """Score of each row of a batch assembled from scored rounds, matched on (uid, position in its group).

    ``rounds`` are ``(uids, scores)`` of each scored round, row-aligned. Filtering and concatenation keep the
    rows of a group in order, so the k-th row of a uid in the batch is the k-th row of that uid when scored.
    """
    table: dict[str, list[float]] = {}
    for round_uids, round_scores in rounds:
        if len(round_uids) != len(round_scores):
            raise ValueError(f"a scored round has {len(round_uids)} rows but {len(round_scores)} scores")
        for uid, score in zip(round_uids, round_scores):
            table.setdefault(str(uid), []).append(float(score))
    seen: Counter = Counter()
    out = np.empty(len(uids), dtype=np.float64)
    for row, uid in enumerate(uids):
        uid = str(uid)
        position = seen[uid]
        seen[uid] += 1
        try:
            out[row] = table[uid][position]
        except (KeyError, IndexError):
            raise ValueError(f"row {row} (uid {uid}) of the batch was never scored") from None
    return out


def dropped_correct_groups(uids: Sequence, verified: Sequence[bool], kept: set) -> list[np.ndarray]:
    """Row indices (within one scored round) of each group whose rows are all verified and whose uid is not in
    ``kept``, in order of first appearance."""
    uids = np.asarray(uids).astype(str)
    verified = np.asarray(verified, dtype=bool)
    groups: dict[str, list[int]] = {}
    for row, uid in enumerate(uids):
        groups.setdefault(uid, []).append(row)
    return [
        np.asarray(rows) for uid, rows in groups.items() if uid not in kept and bool(verified[np.asarray(rows)].all())
    ]


def slot_unit(n: int, world_size: int, micro_batch_size: int | None = None) -> int:
    """Smallest number of group slots whose rows (``slots * n``) split evenly over the ranks (and into
    micro-batches of ``micro_batch_size`` per rank when dynamic batching is off)."""
    rows = world_size * (micro_batch_size or 1)
    return rows // math.gcd(n, rows)


@dataclass(frozen=True)
class FilteredPlan:
    """``slots`` group slots of the batch go to echo rows; the clips of ``groups`` dropped groups fill them."""

    slots: int
    groups: int


def plan_filtered_clips(available: int, *, n: int, rollout_batch_size: int, unit: int, limit: int) -> FilteredPlan:
    """How many dropped all-correct groups to use and how many group slots their clips take.

    Args:
        available: dropped all-correct groups at hand.
        n: rollouts per group (clips per slot).
        rollout_batch_size: group slots of the batch.
        unit: slots come in multiples of this (:func:`slot_unit`).
        limit: ``echo.keep_filtered_clips``: -1 = all, 0 = none, else at most this many clips.
    """
    wanted = available if limit < 0 else min(available, limit)
    max_slots = (rollout_batch_size // 2) // unit * unit  # DAPO keeps at least half of its groups
    if wanted <= 0 or max_slots == 0:
        return FilteredPlan(0, 0)
    slots = min(math.ceil(math.ceil(wanted / n) / unit) * unit, max_slots)
    return FilteredPlan(slots, min(wanted, slots * n))


def echo_rows(source: DataProto, rows: torch.Tensor, echo_mask: torch.Tensor, size: int, like: DataProto) -> DataProto:
    """``size`` update rows holding the clips of ``source`` (the rollouts ``rows``, clip tokens ``echo_mask``).

    Each row has zero advantage and ``response_mask`` 0 (no PG/KL term, not in the token count); its clip tokens
    are in ``echo_mask``. Rows past the clips (the rest of the last slot) repeat clip rollouts (or, without any
    clip, rows of ``source``) with an empty ``echo_mask``: they carry no loss at all. Keys follow ``like`` (the main batch), so the two concatenate:
    ``ref_log_probs`` copies ``old_log_probs`` (the KL term is masked out anyway), other missing tensors are 0.

    Args:
        source: the dropped groups' rows, with ``old_log_probs`` and ``old_entropy``.
        rows: [M] rows of ``source`` holding a clip.
        echo_mask: [len(source), R] bool clip tokens.
        size: number of rows to return (>= M).
        like: the batch the rows join.
    """
    if size < rows.numel() or len(source) == 0:
        raise ValueError(f"cannot fit {rows.numel()} clips of {len(source)} rows into {size} rows")
    fill = rows if rows.numel() else torch.arange(len(source))
    picked = torch.cat([rows, fill[torch.arange(size - rows.numel()) % fill.numel()]])
    keeps_clip = torch.arange(size) < rows.numel()
    data = source[picked.tolist()]
    tensors = {}
    for key, value in like.batch.items():
        if key == "response_mask":
            tensors[key] = torch.zeros((size, *value.shape[1:]), dtype=value.dtype)
        elif key == "echo_mask":
            tensors[key] = echo_mask[picked] & keeps_clip.unsqueeze(1)
        elif key in data.batch.keys() and key != "advantages":
            tensors[key] = data.batch[key].to(value.dtype)
        elif key == "ref_log_probs":
            tensors[key] = data.batch["old_log_probs"].to(value.dtype)
        else:
            tensors[key] = torch.zeros((size, *value.shape[1:]), dtype=value.dtype)
    non_tensors = {}
    for key in like.non_tensor_batch:
        non_tensors[key] = data.non_tensor_batch[key] if key in data.non_tensor_batch else np.full(size, None, object)
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info=like.meta_info)
