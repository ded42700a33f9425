"""EchoTrainer: EasyR1's ``RayPPOTrainer`` with verified flags, EchoClip mining, echo metrics and traces.

EasyR1's ``fit`` is used as is. Two hooks:

- ``init_workers`` wraps the worker group's ``update_actor``: the wrapper gets the driver batch after rewards,
  old log-probs/entropies and advantages (and the critic update), mines clips on whole groups with the echo step
  (:mod:`.mining`, :class:`echovl.echo.EchoStep`), writes the clip tensors and λ of the step into the batch, then
  calls EasyR1's ``update_actor`` and adds the ``echo/*`` metrics to its output (EasyR1 mean-reduces and logs them
  with the actor's).
- the reward manager handle is wrapped so the per-sample scores it returns reach the driver without scoring
  twice: EasyR1 keeps only the ``overall`` tensor and the batch means. "Verified" is the reward function's
  ``echo.success_key`` (``accuracy``) >= ``echo.success_threshold``, never ``overall``.

With DAPO's online filtering, ``_make_batch_data`` also keeps the clips of the all-correct groups the filter
drops (:mod:`.filtering`).

With echo inactive (``echo.enable=false`` or ``coef=0``) nothing changes in training: no entropy, no mining;
only ``echo/degenerate_groups`` and ``echo/all_wrong_groups`` are logged (they need just the scores), which makes
the baseline of an A/B comparable.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import ray
import torch
from verl.protocol import DataProto, pad_dataproto_to_divisor, unpad_dataproto
from verl.trainer.ray_trainer import RayPPOTrainer

from ..clip import GroupOutcomes, group_outcomes
from ..echo import EchoStep, MinedBatch, group_ids
from ..traces import TraceWriter
from .actor import ECHO_COEF, ECHO_ROW
from .filtering import (
    dropped_correct_groups,
    echo_row_unit,
    echo_rows,
    layout_update_batch,
    padded_echo_rows,
    rows_scores,
)
from .guidance import make_guide
from .mining import mine_rollout_batch, success_flags, trace_records

__all__ = ["ECHO_SCORE", "EchoTrainer"]

ECHO_SCORE = "echo_score"
"""Non-tensor batch key: each row's ``echo.success_key`` score (set under DAPO, where rows are scored early)."""


class _RecordingRewardManager:
    """Stands in for EasyR1's remote reward manager: forwards ``compute_reward.remote(batch)`` and remembers the
    batch with the result's ObjectRef (Ray keeps the result, so reading it again costs nothing)."""

    def __init__(self, handle):
        self._handle = handle
        self.calls: list[tuple[DataProto, Any]] = []
        self.compute_reward = self  # so that ``compute_reward.remote(...)`` lands in ``remote``

    def remote(self, data: DataProto):
        ref = self._handle.compute_reward.remote(data)
        self.calls.append((data, ref))
        return ref

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


class EchoTrainer(RayPPOTrainer):
    """``RayPPOTrainer`` + EchoRL. Takes the same arguments; ``config`` is an
    :class:`~echovl.easyr1.config.EchoPPOConfig` (its ``echo`` section)."""

    def __init__(self, config, tokenizer, processor, *args, **kwargs):
        super().__init__(config, tokenizer, processor, *args, **kwargs)
        self.echo = config.echo
        if self.reward_fn is not None:
            self.reward_fn = _RecordingRewardManager(self.reward_fn)
        self.echo_step = EchoStep(tokenizer, self.echo) if self.echo.active else None
        self.trace_dir = self.echo.trace_dir or os.path.join(config.trainer.save_checkpoint_path, "echo_traces")
        self._filtered: DataProto | None = None  # DAPO: the dropped all-correct groups kept for their clips
        self._generated_outcomes = None  # DAPO: outcomes over every generated group of the step
        self.guide = make_guide(self)  # LUFFY / UFT (guidance.method), None otherwise
        if self.guide is not None:
            self.train_dataloader = self.guide.loader

    # ------------------------------------------------------------------ hooks into EasyR1's fit

    def init_workers(self) -> None:
        super().init_workers()
        self._easyr1_update_actor = self.actor_rollout_ref_wg.update_actor
        self.actor_rollout_ref_wg.update_actor = self._update_actor
        if self.guide is not None:  # LUFFY: expert rows at generation
            self.guide.wrap_workers(self.actor_rollout_ref_wg)

    def _update_actor(self, batch: DataProto) -> DataProto:
        update_batch, metrics = self.prepare_update(batch)
        output = self._easyr1_update_actor(update_batch)
        for key, value in metrics.items():
            output.non_tensor_batch[key] = np.array([value])
        return output

    def _make_batch_data(self, metrics: dict[str, Any]) -> DataProto:
        if isinstance(self.reward_fn, _RecordingRewardManager):
            self.reward_fn.calls.clear()
        self._filtered, self._generated_outcomes = None, None
        if self.guide is not None:
            self.guide.start_step()
        batch = super()._make_batch_data(metrics)
        if self.config.algorithm.online_filtering:
            batch = self._after_online_filtering(batch)
        if self.guide is not None:  # UFT: rewards on hint + response
            batch, reward_metrics = self.guide.after_batch(batch, metrics)
            if reward_metrics is not None:
                scores = self._success_scores(reward_metrics, "the training batch")
                batch.non_tensor_batch[ECHO_SCORE] = np.array(scores, dtype=object)
        return batch

    # ------------------------------------------------------------------ scores

    def _success_scores(self, reward_metrics: dict[str, list], source: str) -> list:
        key = self.echo.success_key
        if key not in reward_metrics:
            raise KeyError(
                f"the reward function returned no '{key}' score (echo.success_key) for {source}; it returned: "
                f"{', '.join(sorted(reward_metrics))}. Set echo.success_key to its per-sample correctness key."
            )
        return reward_metrics[key]

    def _batch_scores(self, batch: DataProto) -> np.ndarray:
        """Each row's success score: from the batch (DAPO) or from the reward call ``fit`` made on this batch."""
        if ECHO_SCORE in batch.non_tensor_batch:
            return np.asarray(batch.non_tensor_batch[ECHO_SCORE], dtype=np.float64)
        scores = batch.batch["token_level_scores"]
        calls = self.reward_fn.calls if isinstance(self.reward_fn, _RecordingRewardManager) else []
        for _, ref in reversed(calls):
            reward_tensor, reward_metrics = ray.get(ref)
            if reward_tensor.shape == scores.shape and torch.equal(reward_tensor, scores):  # same rows, same order
                return np.asarray(self._success_scores(reward_metrics, "the training batch"), dtype=np.float64)
        print("echovl: no recorded reward call matches the batch; scoring it again for the verified flags.")
        _, reward_metrics = ray.get(self.reward_fn.compute_reward.remote(batch))
        return np.asarray(self._success_scores(reward_metrics, "the training batch"), dtype=np.float64)

    # ------------------------------------------------------------------ DAPO

    def _after_online_filtering(self, batch: DataProto) -> DataProto:
        """Scores for the kept rows; outcomes of every generated group; the dropped all-correct groups."""
        rounds = []
        for data, ref in getattr(self.reward_fn, "calls", []):
            if "token_level_scores" in data.batch.keys():  # a filtering round (not a REMAX baseline call)
                scores = self._success_scores(ray.get(ref)[1], "a generation round")
                rounds.append((data, np.asarray(scores, dtype=np.float64)))
        if not rounds:
            return batch
        uids = batch.non_tensor_batch["uid"]
        batch.non_tensor_batch[ECHO_SCORE] = np.array(
            rows_scores([(d.non_tensor_batch["uid"], s) for d, s in rounds], uids), dtype=object
        )
        all_uids = np.concatenate([d.non_tensor_batch["uid"] for d, _ in rounds])
        all_verified = success_flags(np.concatenate([s for _, s in rounds]), self.echo)
        self._generated_outcomes = group_outcomes(all_verified, group_ids(all_uids))

        if self.echo.keep_filtered_clips == 0 or self._echo_coef(self._generated_outcomes) == 0:
            return batch
        kept, dropped = set(np.asarray(uids).astype(str)), []
        for data, scores in rounds:
            verified = success_flags(scores, self.echo).numpy()
            for rows in dropped_correct_groups(data.non_tensor_batch["uid"], verified, kept):
                dropped.append((data, rows, scores[rows]))
        limit = self.echo.keep_filtered_clips
        pieces = []
        for data, rows, scores in dropped if limit < 0 else dropped[:limit]:
            piece = data[rows.tolist()]
            piece.non_tensor_batch[ECHO_SCORE] = np.array(scores, dtype=object)
            pieces.append(piece)
        self._filtered = DataProto.concat(pieces) if pieces else None
        return batch  # every group DAPO kept: the echo rows come on top (prepare_update)

    def _micro_batch_size(self, stage: str) -> int | None:
        """The actor's ``micro_batch_size_per_device_for_<stage>`` (``None`` under dynamic batching)."""
        actor = self.config.worker.actor
        return None if actor.dynamic_batching else getattr(actor, f"micro_batch_size_per_device_for_{stage}")

    def _entropy_pass(self, data: DataProto, meta_info: dict[str, Any]) -> DataProto:
        """Old log-probs and entropies of extra rows, from the actor workers (padded to the dispatch sizes)."""
        inputs = data.select(
            batch_keys=["input_ids", "attention_mask", "position_ids", "responses"],
            non_tensor_batch_keys=["uid", "multi_modal_data"],
        )
        inputs.meta_info = {k: v for k, v in meta_info.items() if k != "global_token_num"}
        divisor = self.actor_rollout_ref_wg.world_size * (self._micro_batch_size("experience") or 1)
        padded, pad_size = pad_dataproto_to_divisor(inputs, divisor)
        return unpad_dataproto(self.actor_rollout_ref_wg.compute_log_probs(padded), pad_size)

    def _add_filtered_clips(
        self, batch: DataProto, timing: dict[str, float]
    ) -> tuple[DataProto, DataProto, np.ndarray, MinedBatch]:
        """Entropies and clips of the kept dropped groups; one echo row per clip joins the update, beyond the
        batch (:func:`~echovl.easyr1.filtering.layout_update_batch`)."""
        data, self._filtered = self._filtered, None
        start = time.perf_counter()
        output = self._entropy_pass(data, batch.meta_info)
        timing["timing_s/echo_filtered_forward"] = time.perf_counter() - start
        data.batch["old_log_probs"] = output.batch["old_log_probs"]
        data.batch["old_entropy"] = output.batch["old_entropy"]
        scores = np.asarray(data.non_tensor_batch[ECHO_SCORE], dtype=np.float64)
        mined = mine_rollout_batch(self.echo_step, data, scores)
        if len(mined.clips) == 0:
            return batch, data, scores, mined
        world_size, mini_batches = self.actor_rollout_ref_wg.world_size, self._update_mini_batches(batch)
        unit = echo_row_unit(world_size, mini_batches, self._micro_batch_size("update"))
        batch.batch[ECHO_ROW] = torch.zeros(len(batch), dtype=torch.bool)
        clip_rows = torch.unique(mined.clips.row)  # one echo row per rollout (top_k may nest clips in one rollout)
        rows = echo_rows(data, clip_rows, padded_echo_rows(clip_rows.numel(), unit), like=batch)
        return layout_update_batch(batch, rows, world_size, mini_batches), data, scores, mined

    def _update_mini_batches(self, batch: DataProto) -> int:
        """EasyR1's optimizer steps per update: rows / (``worker.actor.global_batch_size`` x ``rollout.n``)."""
        return len(batch) // (self.config.worker.actor.global_batch_size * self.config.worker.rollout.n)

    # ------------------------------------------------------------------ the step before update_actor

    def prepare_update(self, batch: DataProto) -> tuple[DataProto, dict[str, float]]:
        """Verified flags, λ of the step and the clips (their tensors written into the batch); returns the batch for
        ``update_actor`` and the echo metrics."""
        start = time.perf_counter()
        scores = self._batch_scores(batch)
        guide_metrics, pool, on_policy = self.guide.prepare(batch, scores) if self.guide else ({}, None, None)
        outcomes = self._generated_outcomes
        if outcomes is None:  # (LUFFY: a group is all-correct when its rollouts and its expert row are)
            outcomes = group_outcomes(success_flags(scores, self.echo), group_ids(batch.non_tensor_batch["uid"]))
        metrics = outcomes.metrics()
        metrics.update(guide_metrics)
        if not self.echo.active:
            return batch, metrics
        coef = self._echo_coef(outcomes)
        metrics["echo/coef"] = coef
        if coef == 0:  # before echo.start_step, or an adaptive lambda on a step without all-correct groups
            self._filtered = None
            return batch, metrics

        batch.meta_info[ECHO_COEF] = coef
        mined = mine_rollout_batch(self.echo_step, batch, scores, pool=pool)
        metrics["echo/entropy"] = mined.mean_entropy(on_policy)  # over the model's own rollouts
        traced, update_batch, timing = [(batch, scores, mined)], batch, {}
        if self._filtered is not None:
            update_batch, data, data_scores, filtered_mined = self._add_filtered_clips(batch, timing)
            traced.append((data, data_scores, filtered_mined))
            metrics["echo/filtered_clips"] = float(len(filtered_mined.clips))
            metrics["echo/filtered_rows"] = float(len(update_batch) - len(batch))
        metrics.update(self.echo_step.clip_metrics([m for _, _, m in traced]))
        metrics["timing_s/echo_mining"] = time.perf_counter() - start - sum(timing.values())
        metrics.update(timing)

        if self.echo.trace_freq and self.global_step % self.echo.trace_freq == 0:
            self._write_traces(traced)
        return update_batch, metrics

    def _echo_coef(self, outcomes: GroupOutcomes) -> float:
        """λ of this training step (``echo.start_step``, ``echo.coef_schedule``; the adaptive schedule reads the
        fraction of all-correct groups among the step's generated groups)."""
        return self.echo.coef_at(self.global_step, outcomes.degenerate_fraction)

    # ------------------------------------------------------------------ traces

    def _write_traces(self, traced: list[tuple[DataProto, np.ndarray, MinedBatch]]) -> None:
        """Trace ``echo.trace_groups`` groups (mined groups first); with DAPO, half of them from the dropped
        all-correct groups."""
        limit = self.echo.trace_groups
        quotas = [limit] if len(traced) == 1 else [limit // 2, limit - limit // 2]
        try:
            records = []
            for (data, scores, mined), quota in zip(traced, quotas):
                records += trace_records(
                    self.tokenizer,
                    data,
                    scores,
                    mined,
                    train_step=self.global_step,
                    limit=quota,
                    image_dir=self.config.data.image_dir,
                    guided=self.guide is not None,
                )
            path = TraceWriter(self.trace_dir).write(self.global_step, records)
            print(f"echovl: wrote {len(records)} trace records to {path}")
        except (OSError, TypeError, ValueError) as error:  # traces are diagnostics: report, keep training
            print(f"echovl: could not write the traces of step {self.global_step}: {error}")
