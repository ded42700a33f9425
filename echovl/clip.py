"""EchoClip mining: per group, the highest-entropy step among the verified-correct rollouts.

All of it is scatter/gather over a flat (row, step) index, on the inputs' device, with no Python loop over rows,
steps or tokens. Settings are checked where they enter (:class:`echovl.config.EchoConfig`); the functions here
check only the shapes of their inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "SCOPES",
    "SELECTIONS",
    "EchoClips",
    "GroupOutcomes",
    "all_verified_rows",
    "group_outcomes",
    "mine_echo_clips",
    "row_clip_weight",
    "step_entropies",
]

SCOPES = ("all", "degenerate")
SELECTIONS = ("max", "top_k", "soft")


@dataclass
class EchoClips:
    """The clips mined from one batch. Per-clip fields are ordered by ascending group id, then (with several clips
    per group) by descending step entropy, row, step.

    Attributes:
        mask: [B, T] bool, the supervised tokens: text tokens of each chosen row whose step is <= the chosen step
            (the prefix of the rollout up to and including the chosen step); with several clips on one row, the
            union of their prefixes.
        group: [M] the group id of each clip.
        row: [M] the chosen rollout (row of the batch).
        step: [M] the chosen step of that rollout.
        step_entropy: [M] mean token entropy over the chosen step's text tokens.
        length: [M] number of supervised tokens of the clip (its prefix's text tokens).
        weight: [M] the clip's weight in J_echo (1 for ``max`` and ``top_k``; softmax weights for ``soft``).
        token_weight: [B, T] float32, ``w_t = sum over the clips c holding token t of weight_c / length_c``, so that
            ``sum_t w_t * nll_t = sum_c weight_c * mean NLL(c)`` however clips nest (for ``max``: ``1 / length`` on
            each clip's tokens). J_echo is that sum over the summed clip weight (:func:`echovl.loss.echo_term`).
    """

    mask: torch.Tensor
    group: torch.Tensor
    row: torch.Tensor
    step: torch.Tensor
    step_entropy: torch.Tensor
    length: torch.Tensor
    weight: torch.Tensor
    token_weight: torch.Tensor

    def __len__(self) -> int:
        return int(self.row.numel())


@dataclass
class GroupOutcomes:
    """How many groups of a batch were all correct (advantage degeneration) or all wrong."""

    num_groups: int
    all_correct: int
    all_wrong: int

    @property
    def degenerate_fraction(self) -> float:
        """The fraction of all-correct groups (0 without groups): ``d_t`` of the adaptive λ schedule."""
        return self.all_correct / max(self.num_groups, 1)

    def metrics(self) -> dict[str, float]:
        """``echo/degenerate_groups`` and ``echo/all_wrong_groups``: fractions of the groups."""
        groups = max(self.num_groups, 1)
        return {"echo/degenerate_groups": self.all_correct / groups, "echo/all_wrong_groups": self.all_wrong / groups}


def _check_2d(name: str, tensor: torch.Tensor, shape: torch.Size) -> None:
    if tensor.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)} like entropy, got {tuple(tensor.shape)}")


def step_entropies(
    entropy: torch.Tensor, steps: torch.Tensor, text_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean token entropy of every (row, step) over the step's text tokens.

    ``H_s = sum of entropy over the step's text tokens / their number``, summed in float64 (exact for float32
    values of a step, so it does not depend on the order of the additions and equal steps tie exactly). Tokens
    outside the response (``steps < 0``) or not text never count, whatever value their entropy holds (even NaN).

    Returns:
        ``(mean, count)``, both [B, S] with S = number of steps of the longest row: ``mean`` in float64 (NaN where
        the step has no text token), ``count`` the number of text tokens (long).
    """
    if entropy.dim() != 2:
        raise ValueError(f"entropy must be [B, T], got shape {tuple(entropy.shape)}")
    _check_2d("steps", steps, entropy.shape)
    _check_2d("text_mask", text_mask, entropy.shape)
    batch = entropy.shape[0]
    device = entropy.device
    steps = steps.to(device)
    counted = text_mask.to(device).bool() & (steps >= 0)
    num_steps = int(steps.max()) + 1 if steps.numel() else 0
    index = (torch.arange(batch, device=device).unsqueeze(1) * num_steps + steps)[counted]
    count = torch.zeros(batch * num_steps, dtype=torch.long, device=device)
    count.scatter_add_(0, index, torch.ones_like(index))
    sums = torch.zeros(batch * num_steps, dtype=torch.float64, device=device)
    sums.scatter_add_(0, index, entropy[counted].double())
    count = count.view(batch, num_steps)
    return sums.view(batch, num_steps) / count, count


def _all_per_group(flags: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    out = torch.ones(num_groups, dtype=torch.long, device=flags.device)
    return out.scatter_reduce(0, index, flags.long(), reduce="amin").bool()


def all_verified_rows(verified: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """[B] bool: the rows of the groups whose rows are all verified (degenerate groups)."""
    _, index = torch.unique(group, sorted=True, return_inverse=True)
    return _all_per_group(verified.bool(), index, int(index.max()) + 1 if index.numel() else 0)[index]


def group_outcomes(verified: torch.Tensor, group: torch.Tensor) -> GroupOutcomes:
    """Count the groups whose rollouts are all verified (degenerate: zero advantages) or all not."""
    verified = verified.bool()
    groups, index = torch.unique(group, sorted=True, return_inverse=True)
    all_correct = _all_per_group(verified, index, groups.numel())
    all_wrong = _all_per_group(~verified, index, groups.numel())
    return GroupOutcomes(groups.numel(), int(all_correct.sum()), int(all_wrong.sum()))


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

    A step is eligible if its row is verified and it has at least ``min_step_tokens`` text tokens; its entropy H_s
    is the mean of ``entropy`` over its text tokens (:func:`step_entropies`). A clip is the prefix of the step's
    rollout up to and including the step. ``scope="degenerate"`` only mines groups whose rows are all verified.
    Groups with no eligible step get no clip. Per group, the eligible steps are ranked by H_s (ties: the lowest row,
    then the earliest step), and by ``selection``:

    - ``"max"`` (the paper): the first, weight 1.
    - ``"top_k"``: the first ``top_k`` (fewer if the group has fewer), each of weight 1. Two of them may lie in one
      rollout: their clips are then nested prefixes, each still the mean over its own tokens.
    - ``"soft"``: every eligible step, of weight ``softmax_s(H_s / soft_temperature)`` over the group's eligible
      steps: a group's weights sum to 1, so a group weighs as one clip.

    The defaults are the paper's rule; :meth:`echovl.config.EchoConfig.mining_kwargs` gives the product's.

    Args:
        entropy: [B, T] token entropy of the response tokens.
        steps: [B, T] step index from :func:`echovl.steps.step_index` (-1 outside the response).
        text_mask: [B, T] bool, True for text tokens (vision/special tokens excluded).
        verified: [B] bool, rollout verified correct.
        group: [B] long, same value = rollouts of the same prompt.
        min_step_tokens: minimum number of text tokens of an eligible step.
        scope: ``"all"`` or ``"degenerate"``.
        selection: ``"max"``, ``"top_k"`` or ``"soft"``.
        top_k: clips per group for ``selection="top_k"``.
        soft_temperature: softmax temperature for ``selection="soft"``, in nats of step entropy.
    """
    mean, count = step_entropies(entropy, steps, text_mask)
    batch, num_steps = mean.shape
    if verified.shape != (batch,) or group.shape != (batch,):
        raise ValueError(
            f"verified and group must be [B] = [{batch}], got {tuple(verified.shape)} and {tuple(group.shape)}"
        )
    device = entropy.device
    steps, text_mask = steps.to(device), text_mask.to(device).bool()
    verified = verified.to(device).bool()
    groups, row_group = torch.unique(group.to(device), sorted=True, return_inverse=True)
    if {"all": False, "degenerate": True}[scope]:
        verified = verified & _all_per_group(verified, row_group, groups.numel())[row_group]

    # the candidates, ranked within their group: highest entropy, then lowest row, then earliest step (nonzero gives
    # them by row, then step; the stable sorts keep that order among equals)
    eligible = verified.unsqueeze(1) & (count >= min_step_tokens) & mean.isfinite()
    row, step = eligible.nonzero(as_tuple=True)
    value = mean[row, step]
    order = torch.argsort(value, descending=True, stable=True)
    order = order[torch.argsort(row_group[row[order]], stable=True)]
    row, step, value = row[order], step[order], value[order]
    clip_group = row_group[row]
    if selection == "soft":
        top = torch.full((groups.numel(),), -torch.inf, dtype=value.dtype, device=device)
        top = top.scatter_reduce(0, clip_group, value, reduce="amax")
        weight = torch.exp((value - top[clip_group]) / soft_temperature)
        total = torch.zeros(groups.numel(), dtype=weight.dtype, device=device).index_add_(0, clip_group, weight)
        weight = weight / total[clip_group]
    else:
        k = {"max": 1, "top_k": top_k}[selection]
        position = torch.arange(row.numel(), device=device)
        first = torch.full((groups.numel(),), row.numel(), dtype=torch.long, device=device)
        first = first.scatter_reduce(0, clip_group, position, reduce="amin")
        keep = position - first[clip_group] < k
        row, step, value, clip_group = row[keep], step[keep], value[keep], clip_group[keep]
        weight = torch.ones(row.numel(), dtype=torch.float64, device=device)

    # the clip's tokens are the counted tokens of its steps 0..step; clip (r, s) adds weight / length to each of
    # them: summed per step from the last step backwards, then read per token
    # (only the rows holding a clip are touched)
    length = count.cumsum(dim=1)[row, step]
    token_weight = torch.zeros(text_mask.shape, dtype=torch.float32, device=device)
    clip_rows, clip_row = torch.unique(row, return_inverse=True)
    per_step = torch.zeros(clip_rows.numel(), num_steps, dtype=torch.float64, device=device)
    per_step.index_put_((clip_row, step), weight / length.double(), accumulate=True)
    per_step = per_step.flip(1).cumsum(1).flip(1)
    if clip_rows.numel():
        row_steps = steps[clip_rows]
        counted = text_mask[clip_rows] & (row_steps >= 0)
        token_weight[clip_rows] = torch.where(counted, per_step.gather(1, row_steps.clamp(min=0)), 0.0).float()
    return EchoClips(
        mask=token_weight > 0,
        group=groups[clip_group],
        row=row,
        step=step,
        step_entropy=value.to(torch.promote_types(entropy.dtype, torch.float32)),
        length=length,
        weight=weight.float(),
        token_weight=token_weight,
    )


def row_clip_weight(clips: EchoClips, batch_size: int) -> torch.Tensor:
    """[B] float32: the summed weight of the clips of each row, the row's share of J_echo's denominator (the summed
    weight of all clips; 1 per clip row under ``max`` selection)."""
    out = torch.zeros(batch_size, dtype=torch.float32, device=clips.row.device)
    return out.index_add_(0, clips.row, clips.weight.to(out.dtype))
