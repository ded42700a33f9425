"""EchoClip mining: per group, the highest-entropy step among the verified-correct rollouts.

All of it is scatter/gather over a flat (row, step) index, on the inputs' device, with no Python loop over
rows, steps or tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .steps import row_blocks, row_extents

__all__ = [
    "SCOPES",
    "SELECTIONS",
    "EchoClips",
    "GroupOutcomes",
    "group_outcomes",
    "mine_echo_clips",
    "row_clip_weight",
    "step_entropies",
]

SCOPES = ("all", "degenerate")
SELECTIONS = ("max", "top_k", "soft")
_LANES = 4  # accumulators per (row, step), see _step_sums


@dataclass
class EchoClips:
    """The clips mined from one batch. Per-clip fields are ordered by ascending group id (then, with several
    clips per group, by descending step entropy, row, step).

    Attributes:
        mask: [B, T] bool, the supervised tokens: text tokens of each chosen row whose step is <= the
            chosen step (the prefix of the rollout up to and including the chosen step). With several clips
            on one row, the union of their prefixes.
        group: [M] the group id of each clip.
        row: [M] the chosen rollout (row of the batch).
        step: [M] the chosen step of that rollout.
        step_entropy: [M] mean token entropy over the chosen step's text tokens.
        length: [M] number of supervised tokens of the clip (its prefix's text tokens).
        weight: [M] the clip's weight in J_echo (1 for ``max`` and ``top_k``; softmax weights for ``soft``).
        token_weight: ``None`` for ``max`` selection (one clip per row: each clip is the mean over its
            ``mask`` tokens, :func:`echovl.loss.echo_nll`). Otherwise [B, T] float32,
            ``w_t = sum over the clips c holding token t of weight_c / length_c``, so that
            ``sum_t w_t * nll_t = sum_c weight_c * mean NLL(c)`` even when clips of one row nest
            (:func:`echovl.loss.weighted_echo_nll`).
    """

    mask: torch.Tensor
    group: torch.Tensor
    row: torch.Tensor
    step: torch.Tensor
    step_entropy: torch.Tensor
    length: torch.Tensor
    weight: torch.Tensor
    token_weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.row.numel())


@dataclass
class GroupOutcomes:
    """How many groups of a batch were all correct (advantage degeneration) or all wrong."""

    num_groups: int
    all_correct: int
    all_wrong: int


def _check_2d(name: str, tensor: torch.Tensor, shape: torch.Size) -> None:
    if tensor.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)} like entropy, got {tuple(tensor.shape)}")


def _counted(steps: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Tokens that count towards a step: text tokens inside the response."""
    return text_mask.bool() & (steps >= 0)


def _step_sums(
    entropy: torch.Tensor, steps: torch.Tensor, text_mask: torch.Tensor, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, step): float64 entropy sum and text-token count, both [R, S] for the R ``rows`` (default:
    all rows, in order); S is the number of steps of the longest row of the batch."""
    _check_2d("steps", steps, entropy.shape)
    _check_2d("text_mask", text_mask, entropy.shape)
    batch, length = entropy.shape
    device = entropy.device
    text_mask = text_mask.bool()
    if rows is None:
        rows = torch.arange(batch, device=device)
    low, high = (int(v) for v in torch.aminmax(steps)) if steps.numel() else (0, -1)
    num_steps = max(high + 1, 0)
    sums = torch.zeros(rows.numel(), num_steps, dtype=torch.float64, device=device)
    count = torch.zeros(rows.numel(), num_steps, dtype=torch.long, device=device)
    if num_steps == 0 or rows.numel() == 0:
        return sums, count
    # Blocks of rows keep the temporaries in cache. Rows go longest first, so that a block's rows have about
    # the same length and the block stops at its longest row's last text token (the rest is padding).
    extent = row_extents(text_mask).index_select(0, rows)
    extent, order = torch.sort(extent, descending=True, stable=True)
    per_block = row_blocks(rows.numel(), length).step
    block_extents = extent[::per_block].tolist()
    # Each (row, step) gets _LANES accumulators, token t adding to lane t % _LANES: neighbouring tokens (mostly the
    # same step) then go to different bins, which breaks the add-after-add chain through one memory cell that makes
    # a plain scatter-add latency-bound (the lanes make it about 3x faster on CPU). Bins are [row, lane, 1 + step];
    # column 0 takes every token that does not count (outside the response, or not text) and is dropped, so
    # whatever value such a token holds (even NaN) never reaches a step. Plain arithmetic instead of
    # where/masked_fill: on CPU those are several times slower than a multiply.
    columns = num_steps + 1
    width = _LANES * columns  # bins per row
    lanes = torch.arange(length, device=device) % _LANES
    rows_in_block = min(rows.numel(), per_block)
    # the bin arithmetic runs in int32 (about twice as fast on CPU) whenever every value fits
    fits_int32 = rows_in_block * width < 2**31 and low >= -(2**31)
    index_dtype = torch.int32 if fits_int32 else torch.long
    offset = torch.arange(rows_in_block, device=device).unsqueeze(1) * width + (lanes * columns).unsqueeze(0)
    offset = offset.to(index_dtype)
    ones = torch.ones(rows_in_block * length, dtype=torch.long, device=device)
    for start, end in zip(range(0, rows.numel(), per_block), block_extents):
        if end == 0:  # this block and the ones after it have no text token
            break
        place = order[start : start + per_block]  # positions in ``rows``
        block = rows.index_select(0, place)
        n = block.numel()
        # 1 + step for counted tokens, 0 for the others; then the bin
        text = text_mask[:, :end].index_select(0, block).to(index_dtype)  # (mul_ by a bool tensor casts slowly)
        flat = steps[:, :end].index_select(0, block).to(index_dtype).add_(1).clamp_(min=0).mul_(text)
        flat = flat.add_(offset[:n, :end]).view(-1).long()  # scatter takes int64 indices
        block_count = torch.zeros(n * width, dtype=torch.long, device=device)
        block_count.scatter_add_(0, flat, ones[: flat.numel()])
        count.index_copy_(0, place, block_count.view(n, _LANES, columns).sum(dim=1)[:, 1:])
        # float64: the sum of a step's float32 values is exact unless they span a huge range, so it does not depend
        # on the order (or lanes) of the additions, and equal steps tie exactly
        block_sums = torch.zeros(n * width, dtype=torch.float64, device=device)
        block_sums.scatter_add_(0, flat, entropy[:, :end].index_select(0, block).view(-1).double())
        sums.index_copy_(0, place, block_sums.view(n, _LANES, columns).sum(dim=1)[:, 1:])
    return sums, count


def step_entropies(
    entropy: torch.Tensor, steps: torch.Tensor, text_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean token entropy of every (row, step) over the step's text tokens.

    Returns:
        ``(mean, count)``, both [B, S] with S = number of steps of the longest row: ``mean`` in float64
        (NaN where the step has no text token), ``count`` the number of text tokens (long).
    """
    sums, count = _step_sums(entropy, steps, text_mask)
    return sums / count, count


def _group_index(group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct group ids (ascending) and each row's position among them."""
    return torch.unique(group, sorted=True, return_inverse=True)


def _all_per_group(flags: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    out = torch.ones(num_groups, dtype=torch.long, device=flags.device)
    return out.scatter_reduce(0, index, flags.long(), reduce="amin").bool()


def group_outcomes(verified: torch.Tensor, group: torch.Tensor) -> GroupOutcomes:
    """Count the groups whose rollouts are all verified (degenerate: zero advantages) or all not."""
    verified = verified.bool()
    groups, index = _group_index(group)
    num_groups = groups.numel()
    all_correct = _all_per_group(verified, index, num_groups)
    all_wrong = _all_per_group(~verified, index, num_groups)
    return GroupOutcomes(num_groups, int(all_correct.sum()), int(all_wrong.sum()))


def mine_echo_clips(
    entropy: torch.Tensor,
    steps: torch.Tensor,
    text_mask: torch.Tensor,
    verified: torch.Tensor,
    group: torch.Tensor,
    *,
    min_step_tokens: int = 1,
    scope: str = "all",
    selection: str = "max",
    top_k: int = 1,
    soft_temperature: float = 1.0,
) -> EchoClips:
    """Mine the EchoClips of each group.

    A step is eligible if its row is verified and it has at least ``min_step_tokens`` text tokens; its
    entropy H_s is the mean of ``entropy`` over its text tokens. A clip is the prefix of the step's rollout up
    to and including the step. ``scope="degenerate"`` only mines groups whose rows are all verified. Groups
    with no eligible step get no clip. Per group, by ``selection``:

    - ``"max"`` (the paper): the eligible step with the highest H_s; ties go to the lowest row index, then
      the earliest step. Weight 1.
    - ``"top_k"``: the ``top_k`` eligible steps with the highest H_s (fewer if the group has fewer), in that
      order (ties as for ``max``), each a clip of weight 1. Two of them may lie in one rollout: their clips
      are then nested prefixes, and each is still the mean over its own tokens.
    - ``"soft"``: every eligible step is a clip, of weight ``softmax_s(H_s / soft_temperature)`` over the
      group's eligible steps: the weights of a group sum to 1, so a group weighs as one clip.

    Args:
        entropy: [B, T] token entropy of the response tokens.
        steps: [B, T] step index from :func:`echovl.steps.step_index` (-1 outside the response).
        text_mask: [B, T] bool, True for text tokens (vision/special tokens excluded).
        verified: [B] bool, rollout verified correct.
        group: [B] long, same value = rollouts of the same prompt.
        min_step_tokens: minimum number of text tokens of an eligible step (>= 1).
        scope: ``"all"`` or ``"degenerate"``.
        selection: ``"max"``, ``"top_k"`` or ``"soft"``.
        top_k: clips per group for ``selection="top_k"`` (>= 1).
        soft_temperature: softmax temperature (> 0) for ``selection="soft"``, in nats of step entropy.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "top_k" and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if selection == "soft" and not (isinstance(soft_temperature, (int, float)) and soft_temperature > 0):
        raise ValueError(f"soft_temperature must be a number > 0, got {soft_temperature!r}")
    if min_step_tokens < 1:
        raise ValueError(f"min_step_tokens must be >= 1, got {min_step_tokens}")
    if entropy.dim() != 2:
        raise ValueError(f"entropy must be [B, T], got shape {tuple(entropy.shape)}")
    batch = entropy.shape[0]
    if verified.shape != (batch,) or group.shape != (batch,):
        raise ValueError(
            f"verified and group must be [B] = [{batch}], got {tuple(verified.shape)} and {tuple(group.shape)}"
        )
    device = entropy.device
    verified = verified.to(device).bool()
    group = group.to(device)
    steps = steps.to(device)
    text_mask = text_mask.to(device).bool()

    groups, row_group = _group_index(group)
    num_groups = groups.numel()
    row_ok = verified
    if scope == "degenerate":
        row_ok = row_ok & _all_per_group(verified, row_group, num_groups)[row_group]
    # only the rows that can hold a clip (ascending) need their step entropies
    ok_rows = row_ok.nonzero().flatten()
    sums, count = _step_sums(entropy, steps, text_mask, rows=ok_rows)
    score = sums / count  # the step means; NaN where a step has no text token
    if min_step_tokens > 1:
        score.masked_fill_(count < min_step_tokens, torch.nan)
    score.nan_to_num_(nan=-torch.inf, posinf=-torch.inf)  # ineligible: no (or too few) tokens, not finite
    ok_group = row_group.index_select(0, ok_rows)
    if selection != "max":
        return _mine_several(
            score,
            count,
            ok_rows,
            ok_group,
            groups,
            steps,
            text_mask,
            entropy.dtype,
            selection,
            top_k,
            soft_temperature,
        )
    # per row: the best step (max returns the first, i.e. earliest, of tied maxima); then per group: the best
    # row, the lowest of tied ones
    if score.shape[1]:
        best, best_step = score.max(dim=1)
    else:
        best = score.new_full((ok_rows.numel(),), -torch.inf)
        best_step = torch.zeros(ok_rows.numel(), dtype=torch.long, device=device)
    group_best = torch.full((num_groups,), -torch.inf, dtype=best.dtype, device=device)
    group_best = group_best.scatter_reduce(0, ok_group, best, reduce="amax")
    candidate = (best > -torch.inf) & (best == group_best[ok_group])
    sentinel = ok_rows.numel()
    position = torch.arange(sentinel, device=device).masked_fill_(~candidate, sentinel)
    first = torch.full((num_groups,), sentinel, dtype=torch.long, device=device)
    first = first.scatter_reduce(0, ok_group, position, reduce="amin")

    mined = first < sentinel
    pick = first[mined]
    row = ok_rows.index_select(0, pick)
    step = best_step.index_select(0, pick)

    mask = torch.zeros_like(text_mask)  # only the chosen rows are touched
    chosen_steps = steps.index_select(0, row)
    chosen_counted = _counted(chosen_steps, text_mask.index_select(0, row))
    clip_mask = chosen_counted & (chosen_steps <= step.unsqueeze(1))
    mask.index_copy_(0, row, clip_mask)
    # the clip's tokens are the counted tokens of its steps 0..step (cheaper than summing a bool mask on CPU)
    length = count.index_select(0, pick).cumsum(dim=1).gather(1, step.unsqueeze(1)).squeeze(1)
    out_dtype = torch.promote_types(entropy.dtype, torch.float32)
    return EchoClips(
        mask=mask,
        group=groups[mined],
        row=row,
        step=step,
        step_entropy=best.index_select(0, pick).to(out_dtype),
        length=length,
        weight=torch.ones(row.numel(), dtype=torch.float32, device=device),
    )


def _mine_several(
    score: torch.Tensor,
    count: torch.Tensor,
    ok_rows: torch.Tensor,
    ok_group: torch.Tensor,
    groups: torch.Tensor,
    steps: torch.Tensor,
    text_mask: torch.Tensor,
    entropy_dtype: torch.dtype,
    selection: str,
    top_k: int,
    soft_temperature: float,
) -> EchoClips:
    """``top_k`` and ``soft`` selection from the eligible steps' ``score`` [R, S] (-inf: ineligible) of the
    rows ``ok_rows`` (ascending; their group positions ``ok_group``)."""
    device = score.device
    num_groups = groups.numel()
    local, step = (score > -torch.inf).nonzero(as_tuple=True)  # candidates, by row then step
    value = score[local, step]
    cand_group = ok_group.index_select(0, local)
    # order within a group: highest entropy first, then lowest row, then earliest step (the candidates' own order)
    order = torch.argsort(value, descending=True, stable=True)
    order = order.index_select(0, torch.argsort(cand_group.index_select(0, order), stable=True))
    local, step, value, cand_group = (t.index_select(0, order) for t in (local, step, value, cand_group))
    if selection == "top_k":
        position = torch.arange(local.numel(), device=device)
        first = torch.full((num_groups,), local.numel(), dtype=torch.long, device=device)
        first = first.scatter_reduce(0, cand_group, position, reduce="amin")
        keep = position - first.index_select(0, cand_group) < top_k
        local, step, value, cand_group = (t[keep] for t in (local, step, value, cand_group))
        weight = torch.ones(local.numel(), dtype=torch.float64, device=device)
    else:  # soft: softmax of H_s / temperature over the group's eligible steps
        top = torch.full((num_groups,), -torch.inf, dtype=value.dtype, device=device)
        top = top.scatter_reduce(0, cand_group, value, reduce="amax")
        weight = torch.exp((value - top.index_select(0, cand_group)) / soft_temperature)
        total = torch.zeros(num_groups, dtype=weight.dtype, device=device).index_add_(0, cand_group, weight)
        weight = weight / total.index_select(0, cand_group)

    row = ok_rows.index_select(0, local)
    prefix_count = count.cumsum(dim=1)  # text tokens of steps 0..s, per (row, step)
    length = prefix_count[local, step]
    # token weights: clip (r, s) adds weight / length to every counted token of steps <= s of row r; summed per
    # step from the last step backwards, then read per token
    per_step = torch.zeros(score.shape, dtype=torch.float64, device=device)
    per_step.index_put_((local, step), weight / length.double(), accumulate=True)
    per_step = per_step.flip(1).cumsum(1).flip(1)
    token_weight = torch.zeros(text_mask.shape, dtype=torch.float32, device=device)
    rows_with_clip = torch.unique(local)
    if rows_with_clip.numel():
        batch_rows = ok_rows.index_select(0, rows_with_clip)
        row_steps = steps.index_select(0, batch_rows)
        counted = _counted(row_steps, text_mask.index_select(0, batch_rows))
        picked = per_step.index_select(0, rows_with_clip).gather(1, row_steps.clamp(0, max(score.shape[1] - 1, 0)))
        token_weight.index_copy_(0, batch_rows, torch.where(counted, picked, 0.0).float())
    return EchoClips(
        mask=token_weight > 0,
        group=groups.index_select(0, cand_group),
        row=row,
        step=step,
        step_entropy=value.to(torch.promote_types(entropy_dtype, torch.float32)),
        length=length,
        weight=weight.float(),
        token_weight=token_weight,
    )


def row_clip_weight(clips: EchoClips, batch_size: int) -> torch.Tensor:
    """[B] float32: the summed weight of the clips of each row (the row's share of the J_echo denominator,
    ``sum over all clips of weight``; 1 per clip row under ``max`` selection)."""
    out = torch.zeros(batch_size, dtype=torch.float32, device=clips.row.device)
    return out.index_add_(0, clips.row, clips.weight.to(out.dtype))
