"""The echo step on an EasyR1 rollout batch: where EasyR1 keeps what :class:`echovl.echo.EchoStep` needs, and back.

After ``_balance_batch`` the rows of one prompt (one ``uid``) are scattered over the batch, and over the ranks once
dispatched, so clips are mined here, on the driver, on whole groups: ``uid`` strings become group ids, the reward's
``echo.success_key`` scores give the verified flags, the echo step mines, and its per-row tensors go back into the
batch for the actor (:func:`mine_rollout_batch`). :func:`trace_records` reads the prompts, images and hints of the
traced groups from the batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from verl.protocol import DataProto

from ..config import EchoConfig
from ..echo import EchoStep, MinedBatch, group_ids, verified_flags
from .luffy import EXPERT_ROW
from .uft import HINT_LENGTH

__all__ = ["mine_rollout_batch", "trace_records", "success_flags"]


def success_flags(scores: Sequence[float], echo: EchoConfig) -> torch.Tensor:
    """The verified flags (:func:`echovl.echo.verified_flags`) of EasyR1 reward scores: ``score[echo.success_key] >=
    echo.success_threshold``; a score that is not a finite number (a broken reward function) is an error."""
    values = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"reward scores '{echo.success_key}' must be finite numbers, got {values[~np.isfinite(values)]}"
        )
    return verified_flags(torch.from_numpy(values), echo.success_threshold)


def mine_rollout_batch(
    step: EchoStep, batch: DataProto, scores: np.ndarray, pool: torch.Tensor | None = None
) -> MinedBatch:
    """Mine the clips of an EasyR1 rollout batch (any row order) and write their tensors
    (:meth:`~echovl.echo.MinedBatch.update_tensors`) into it.

    Uses ``responses``, ``response_mask``, ``old_entropy`` and the ``uid`` of every row; ``scores`` are the rows'
    ``echo.success_key`` scores; ``pool`` ([B] bool) the rows that may give a clip (default: all).
    """
    if "old_entropy" not in batch.batch.keys():
        raise KeyError(
            "old_entropy is missing from the batch: the actor workers must be echovl's EchoWorker "
            "(echovl.easyr1.worker), which returns it beside old_log_probs"
        )
    mined = step.mine(
        batch.batch["responses"],
        batch.batch["response_mask"],
        batch.batch["old_entropy"],
        success_flags(scores, step.config),
        group_ids(batch.non_tensor_batch["uid"]),
        pool=pool,
    )
    batch.batch.update(mined.update_tensors())
    return mined


def trace_records(
    tokenizer,
    batch: DataProto,
    scores: np.ndarray,
    mined: MinedBatch,
    *,
    train_step: int,
    limit: int,
    image_dir: str | None = None,
    guided: bool = False,
) -> list:
    """Trace records of up to ``limit`` groups of a mined batch (mined groups first), with each group's prompt text
    and first image. With ``guided`` (LUFFY / UFT), rows carrying ``expert_row`` are marked as expert rows and a
    prompt's ``hint_length`` last tokens become the record's ``hint``."""
    groups = mined.traced_groups(limit)
    prompts: list[str] = [""] * len(batch)
    images: list[Any] = [None] * len(batch)
    hint_length = batch.batch[HINT_LENGTH] if guided and HINT_LENGTH in batch.batch.keys() else None
    hints: list[str | None] | None = [None] * len(batch) if hint_length is not None else None
    multi_modal = batch.non_tensor_batch.get("multi_modal_data")
    for g in groups:
        row = int((mined.group == g).nonzero()[0])  # the record reads its prompt and image from the first row
        prompt = batch.batch["prompts"][row]
        prompt_mask = batch.batch["attention_mask"][row, : prompt.shape[0]].bool()
        ids = prompt[prompt_mask]
        if hints is not None:  # UFT: the hint is the prompt's last tokens
            split = ids.numel() - int(hint_length[row])
            ids, hints[row] = ids[:split], tokenizer.decode(ids[split:], skip_special_tokens=True)
        prompts[row] = tokenizer.decode(ids, skip_special_tokens=True)
        pictures = (multi_modal[row] or {}).get("images") if multi_modal is not None else None
        if pictures is not None and len(pictures):
            picture = pictures[0]
            if isinstance(picture, str) and image_dir:
                picture = os.path.join(image_dir, picture)
            images[row] = picture
    answers = batch.non_tensor_batch.get("ground_truth")
    return mined.records(
        tokenizer,
        groups,
        train_step=train_step,
        prompts=prompts,
        answers=[str(a) for a in answers] if answers is not None else [""] * len(batch),
        rewards=batch.batch["token_level_scores"].sum(-1).tolist(),
        accuracy=np.asarray(scores, dtype=np.float64).tolist(),
        images=images,
        group_names=[str(u) for u in batch.non_tensor_batch["uid"]],
        source="easyr1",
        expert=batch.batch[EXPERT_ROW].tolist() if guided and EXPERT_ROW in batch.batch.keys() else None,
        hints=hints,
    )
