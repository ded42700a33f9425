"""DAPO's online filtering and EchoRL: keeping the clips of the all-correct groups the filter drops.

DAPO (``algorithm.online_filtering``) drops every group whose rollouts all score alike, so the all-correct
groups (exactly the groups EchoRL exists for) never reach the actor. What EchoRL needs of such a group is one
rollout, the one holding its clip, and to find it, the token entropies of all of its rollouts. So:

1. ``_make_batch_data`` (EasyR1's, unchanged) fills the batch with the groups the filter keeps; the trainer
   records every scored round and collects the all-correct groups it dropped (at most
   ``echo.keep_filtered_clips`` of them). The batch stays DAPO's: EasyR1 balances it, computes its old
   log-probs and advantages as usual.
2. Before ``update_actor`` the dropped groups get one no-grad forward (``compute_log_probs``, for their
   entropies), their clips are mined, and :func:`echo_rows` turns each clip's rollout into an *echo row*:
   zero advantage, ``response_mask`` 0, the clip's token weights, the attention cut after the clip's
   last token (a causal model's log-probs of the clip do not depend on what follows), flagged ``echo_row``.
   Their number is padded to :func:`echo_row_unit` with inert copies.
3. :func:`layout_update_batch` adds the echo rows *beyond* the batch: each rank's share of the DAPO batch
   (EasyR1's balanced order, untouched) followed by its share of the echo rows, spread evenly by length over
   the ranks and the mini-batches. The actor trains every mini-batch's PG rows exactly as EasyR1 would and
   its share of echo rows after them (``EchoActor.update_policy``).

Cost per step: no DAPO group is given up; a no-grad forward over the dropped groups' rollouts; the update's
forward/backward over one echo row per clip (prompt + clip prefix), plus fewer than one unit of inert rows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from verl.protocol import DataProto
from verl.utils.seqlen_balancing import get_seqlen_balanced_partitions

from ..echo import ECHO_CLIP_WEIGHT, ECHO_WEIGHT
from .actor import ECHO_ROW

__all__ = [
    "dropped_correct_groups",
    "echo_row_unit",
    "echo_rows",
    "layout_update_batch",
    "padded_echo_rows",
    "rows_scores",
]


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


def echo_row_unit(world_size: int, mini_batches: int, micro_batch_size: int | None = None) -> int:
    """Echo rows come in multiples of this: an equal share for every rank and mini-batch (and whole
    micro-batches of ``micro_batch_size`` per share when dynamic batching is off)."""
    return world_size * mini_batches * (micro_batch_size or 1)


def padded_echo_rows(clips: int, unit: int) -> int:
    """Rows that ``clips`` echo rows take once padded to a multiple of ``unit`` (0 without a clip)."""
    return math.ceil(clips / unit) * unit


def echo_rows(source: DataProto, rows: torch.Tensor, size: int, like: DataProto) -> DataProto:
    """``size`` update rows holding the clips of ``source`` (the rollouts ``rows``; their clip tensors
    :data:`~echovl.echo.ECHO_WEIGHT` and :data:`~echovl.echo.ECHO_CLIP_WEIGHT`, as mining wrote them).

    Each row has zero advantage and ``response_mask`` 0 (no PG/KL term, not in the token count), its clip tensors
    and :data:`~echovl.easyr1.actor.ECHO_ROW` set; its attention stops at its clip's last token (nothing after it
    changes the clip's log-probs, and the update skips it). Rows past the clips repeat clip rollouts (or, without any
    clip, rows of ``source``) with no clip weight and the attention cut after the first response token: they carry
    no loss at all and cost little. Keys follow ``like`` (the main batch, which must hold ``echo_row``), so the two
    concatenate: ``ref_log_probs`` copies ``old_log_probs`` (the KL term is masked out anyway), other missing
    tensors are 0.

    Args:
        source: the dropped groups' rows, with ``old_log_probs``, ``old_entropy`` and the clip tensors.
        rows: [M] rows of ``source`` holding a clip (each once; a row carries the weights of all its clips).
        size: number of rows to return (>= M).
        like: the batch the rows join.
    """
    if size < rows.numel() or len(source) == 0:
        raise ValueError(f"cannot fit {rows.numel()} clips of {len(source)} rows into {size} rows")
    fill = rows if rows.numel() else torch.arange(len(source))
    picked = torch.cat([rows, fill[torch.arange(size - rows.numel()) % fill.numel()]])
    keeps_clip = torch.arange(size) < rows.numel()
    data = source[picked.tolist()]
    clip_mask = (data.batch[ECHO_WEIGHT] > 0) & keeps_clip.unsqueeze(1)
    tensors = {}
    for key, value in like.batch.items():
        if key == "response_mask":
            tensors[key] = torch.zeros((size, *value.shape[1:]), dtype=value.dtype)
        elif key == ECHO_ROW:
            tensors[key] = torch.ones(size, dtype=value.dtype)
        elif key in (ECHO_WEIGHT, ECHO_CLIP_WEIGHT):  # the row's clip weights; padding rows none
            keep = keeps_clip.view(-1, *[1] * (value.dim() - 1))
            tensors[key] = data.batch[key].to(value.dtype) * keep
        elif key == "attention_mask":
            tensors[key] = _attention_up_to_clip_end(data.batch[key], clip_mask).to(value.dtype)
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


def _attention_up_to_clip_end(attention_mask: torch.Tensor, clip_mask: torch.Tensor) -> torch.Tensor:
    """The attention mask [B, S] with every response position after the clip's last token [B, R] switched off
    (rows without a clip keep their first response token)."""
    response_length = clip_mask.shape[1]
    positions = torch.arange(response_length)
    clip_end = torch.where(clip_mask, positions, torch.zeros((), dtype=torch.long)).amax(dim=1)  # 0 without a clip
    attention = attention_mask.clone()
    attention[:, -response_length:] *= (positions <= clip_end.unsqueeze(1)).to(attention.dtype)
    return attention


def layout_update_batch(batch: DataProto, echo: DataProto, world_size: int, mini_batches: int) -> DataProto:
    """The update batch: on each rank its share of ``batch`` (in ``batch``'s order: EasyR1 balanced it) followed
    by its share of the ``echo`` rows, which are spread over ranks and mini-batches by EasyR1's own partitioner
    (equal row counts, balanced token counts).

    The worker dispatch gives rank ``r`` the ``r``-th equal chunk of the result; the actor cuts its echo rows into
    ``mini_batches`` equal consecutive shares, and share ``j`` here is partition ``r * mini_batches + j``.
    """
    parts = world_size * mini_batches
    if len(batch) % world_size or len(echo) % parts or not len(echo):
        raise ValueError(
            f"cannot lay out {len(batch)} rows + {len(echo)} echo rows over {world_size} ranks x {mini_batches} "
            "mini-batches: the rows must split evenly (echo rows in multiples of echo_row_unit)"
        )
    lengths = echo.batch["attention_mask"].sum(-1).tolist()
    partitions = get_seqlen_balanced_partitions(lengths, k_partitions=parts, equal_size=True)
    main_rows, echo_per_rank = len(batch) // world_size, len(echo) // world_size
    order = []  # rows of concat([batch, echo])
    for rank in range(world_size):
        order += range(rank * main_rows, (rank + 1) * main_rows)
        for part in partitions[rank * mini_batches : (rank + 1) * mini_batches]:
            order += [len(batch) + row for row in part]
    assert len(order) == len(batch) + echo_per_rank * world_size
    update = DataProto.concat([batch, echo])
    update.reorder(torch.tensor(order))
    update.meta_info = dict(batch.meta_info)
    update.meta_info["global_token_num"] = torch.sum(update.batch["attention_mask"], dim=-1).tolist()
    return update
