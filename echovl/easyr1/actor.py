"""EchoActor: EasyR1's ``DataParallelPPOActor`` plus token entropy in the old-log-prob pass and the echo term.

Entropy (no extra forward, no copy of EasyR1's forward code). ``_forward_micro_batch`` computes the logits,
scales them by the temperature in place and hands them to ``self.log_probs_from_logits``, on the padded and
on the padding-free path alike; everything after that (the Ulysses gather, ``pad_input`` back to [B, S], the
response slice, the dynamic-batching reorder in ``compute_log_prob``) only indexes the leading dimensions.
So while :meth:`EchoActor.returning_entropy` is active, ``log_probs_from_logits`` returns ``[..., 2]``:
EasyR1's own log-probs (the same function, so bit-identical) and :func:`echovl.entropy.token_entropy` of the
same logits, computed in row chunks after the log-probs are done (their fp32 temporaries are freed by then),
so peak memory is EasyR1's plus one chunk. EasyR1's code carries the pair to the end untouched. Only chunks
holding a row that predicts a response token are computed (``_forward_micro_batch`` notes which rows those
are, in the order of the path taken), so prompt tokens and response padding cost nothing; they read as 0.

The echo term. ``update_policy`` is EasyR1's loop with a few marked additions. Per micro-batch it adds
``coef * echo_total * world_size / global_clips``, where ``echo_total`` is :func:`echovl.loss.echo_nll` of the
log-probs the PG loss already uses and ``global_clips`` the clip count of the mini-batch summed over all ranks
(all-reduced like EasyR1's token count). EasyR1 scales the PG loss to ``sum(l * mask) * world_size /
global_tokens`` per micro-batch and FSDP averages gradients over ranks, so the two terms add up, over
micro-batches and ranks, to EasyR1's PG loss + ``coef *`` (mean over the mini-batch's clips of each clip's mean
NLL), for ``loss_avg_mode`` token and seq alike (the echo term never touches EasyR1's averaging).

Echo rows (:data:`ECHO_ROW`, DAPO's dropped all-correct groups) carry the echo term only. They are taken out
before EasyR1's mini-batch split, so the PG rows are split exactly as EasyR1 splits them, cut into one equal
share per mini-batch and trained after that mini-batch's PG micro-batches, in micro-batches of their own:
the optimizer steps are EasyR1's, every step sees its share of both kinds of rows, and EasyR1's PG arithmetic
and metrics never see a row without a PG term. With echo inactive it is EasyR1's ``update_policy`` itself; a
mini-batch without clip tokens on any rank runs exactly EasyR1's arithmetic.

LUFFY and UFT (:class:`~echovl.easyr1.guidance.GuidedUpdate`, the lines marked ``# guidance``) hook into the same
loop: LUFFY's PG loss on micro-batches holding an expert row, UFT's hint log-probs from the same forward and its
hint NLL term. A batch without their keys (or ``guidance.method: none``) leaves the loop as it is.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from ray.experimental.tqdm_ray import tqdm
from verl.protocol import DataProto
from verl.trainer.core_algos import average_loss, compute_kl, compute_policy_loss
from verl.utils.py_functional import append_to_dict
from verl.utils.seqlen_balancing import prepare_dynamic_batch
from verl.utils.ulysses import ulysses_pad_and_slice_inputs
from verl.workers.actor.dp_actor import DataParallelPPOActor

from ..config import EchoConfig
from ..entropy import token_entropy
from ..guidance import GuidanceConfig
from ..loss import echo_nll, weighted_echo_nll
from .guidance import GuidedUpdate

__all__ = ["ECHO_CLIP_WEIGHT", "ECHO_COEF", "ECHO_MASK", "ECHO_ROW", "ECHO_WEIGHT", "EchoActor"]

ECHO_MASK = "echo_mask"
"""Batch key of the clip tokens ([B, response_len] bool), written by the trainer."""

ECHO_ROW = "echo_row"
"""Batch key ([B] bool) of rows that carry the echo term only: the clip rollouts of the all-correct groups DAPO's
filter dropped (zero advantage, ``response_mask`` 0). The update trains them after the PG rows of each
mini-batch, in micro-batches of their own."""

ECHO_WEIGHT = "echo_weight"
"""Batch key of the per-token clip weights ([B, response_len] float, :attr:`echovl.clip.EchoClips.token_weight`),
present under ``echo.selection`` ``top_k`` / ``soft`` only (then J_echo is :func:`echovl.loss.weighted_echo_nll`)."""

ECHO_CLIP_WEIGHT = "echo_clip_weight"
"""Batch key ([B] float) of the summed weight of each row's clips, the J_echo denominator's share of the row
(with :data:`ECHO_WEIGHT`)."""

ECHO_COEF = "echo_coef"
"""``meta_info`` key: lambda of this training step (the trainer's schedule, ``EchoConfig.coef_at``)."""

_ECHO_ROWS_ONLY = "echovl_echo_rows_only"
"""``meta_info`` flag of the micro-batches :meth:`EchoActor._echo_micro_batches` cuts from the echo rows."""


class EchoActor(DataParallelPPOActor):
    """``DataParallelPPOActor`` with :meth:`compute_log_prob_and_entropy` and the echo term in ``update_policy``.

    Args:
        config: EasyR1's ``ActorConfig``; its ``echo`` field (an :class:`~echovl.config.EchoConfig`, copied
            from the run's ``echo:`` section) is used unless ``echo`` is given.
        actor_module, actor_optimizer: as for ``DataParallelPPOActor``.
        echo: the echo settings (defaults to ``config.echo``, else echo disabled).
        guidance: LUFFY / UFT settings (defaults to ``config.guidance``, else none).
    """

    def __init__(
        self,
        config,
        actor_module,
        actor_optimizer=None,
        echo: EchoConfig | None = None,
        guidance: GuidanceConfig | None = None,
    ):
        super().__init__(config, actor_module, actor_optimizer)
        if echo is None:
            echo = getattr(config, "echo", None) or EchoConfig(enable=False)
        self.echo = echo
        self.guidance = guidance or getattr(config, "guidance", None)  # LUFFY / UFT (echovl.easyr1.guidance)
        self._log_probs_only = self.log_probs_from_logits  # EasyR1's (possibly torch.compile'd) function
        # like EasyR1's log-prob function, compiled when use_torch_compile: the chunk's fp32 passes fuse into a few
        # kernels that read the logits once or twice, instead of about ten full-chunk memory passes in eager mode
        self._token_entropy = torch.compile(token_entropy, dynamic=True) if config.use_torch_compile else token_entropy
        self._with_entropy = False
        self._entropy_rows: torch.Tensor | None = None
        self.log_probs_from_logits = self._log_probs_maybe_with_entropy

    # ------------------------------------------------------------------ entropy in the old-log-prob pass

    def _log_probs_maybe_with_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """EasyR1's log-probs, with the token entropy stacked as a trailing dim while requested."""
        log_probs = self._log_probs_only(logits, labels)
        if not self._with_entropy:
            return log_probs
        entropy = self._entropy(logits, self._entropy_rows)  # logits are already divided by the temperature
        return torch.stack([log_probs, entropy.to(log_probs.dtype)], dim=-1)

    def _entropy(self, logits: torch.Tensor, needed: torch.Tensor | None) -> torch.Tensor:
        """:func:`token_entropy` of ``logits`` [..., V], chunk by chunk; chunks with no ``needed`` row (prompt
        tokens on the padding-free path, response padding) are skipped and read as 0."""
        chunk = self.echo.entropy_chunk_size
        if needed is None or needed.shape != logits.shape[:-1]:
            return token_entropy(logits, chunk_size=chunk)  # (not reached from EasyR1's paths)
        blocks = [(logits, needed)] if logits.dim() == 2 else list(zip(logits.unbind(0), needed.unbind(0)))
        out = torch.zeros(needed.shape, dtype=torch.float32, device=logits.device)
        rows = needed.shape[-1]
        padded = torch.nn.functional.pad(needed.reshape(-1, rows), (0, -rows % chunk))
        flags = padded.view(len(blocks), -1, chunk).any(-1).tolist()  # one device sync per micro-batch
        out_blocks = [out] if logits.dim() == 2 else out.unbind(0)
        for (block, _), out_block, block_flags in zip(blocks, out_blocks, flags):
            for index, flag in enumerate(block_flags):
                if flag:
                    part = slice(index * chunk, (index + 1) * chunk)
                    out_block[part] = self._token_entropy(block[part], chunk_size=chunk)
        return out

    def _rows_needing_entropy(self, micro_batch: dict[str, Any]) -> torch.Tensor:
        """Which rows of the logits that ``_forward_micro_batch`` hands to ``log_probs_from_logits`` predict a
        response token: [B, R] on the padded path; on the padding-free path [tokens] in unpadded order (and
        padded and sliced for this rank like EasyR1's labels under Ulysses)."""
        attention_mask = micro_batch["attention_mask"].bool()
        response_length = micro_batch["responses"].size(-1)
        predicts_response = attention_mask[:, -response_length:]  # logits row s predicts token s + 1
        if not self.config.padding_free:
            return predicts_response
        needed = torch.zeros_like(attention_mask)
        needed[:, -response_length - 1 : -1] = predicts_response
        needed = needed[attention_mask].unsqueeze(0)  # row-major, as unpad_input orders the tokens
        if self.config.ulysses_size > 1:
            needed, _, _ = ulysses_pad_and_slice_inputs(needed, None, self.config.ulysses_size)
        return needed.squeeze(0)

    def _forward_micro_batch(self, micro_batch: dict[str, Any], temperature: float) -> torch.Tensor:
        if not self._with_entropy:
            return super()._forward_micro_batch(micro_batch, temperature)
        self._entropy_rows = self._rows_needing_entropy(micro_batch)
        try:
            return super()._forward_micro_batch(micro_batch, temperature)
        finally:
            self._entropy_rows = None

    @contextlib.contextmanager
    def returning_entropy(self) -> Iterator[None]:
        """While active, ``compute_log_prob`` returns ``[B, response_len, 2]``: log-probs and entropies."""
        self._with_entropy = True
        try:
            yield
        finally:
            self._with_entropy = False

    @torch.no_grad()
    def compute_log_prob_and_entropy(self, data: DataProto) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward: ``(log_probs, entropy)``, both fp32 [B, response_len], entropy in nats at the
        batch's temperature (``data.meta_info["temperature"]``), on every EasyR1 path (padded, padding-free,
        Ulysses, dynamic batching)."""
        with self.returning_entropy():
            both = self.compute_log_prob(data)
        return split_log_probs_and_entropy(both)

    # ------------------------------------------------------------------ PPO update with the echo term

    def update_policy(self, data: DataProto) -> dict[str, Any]:
        """EasyR1's ``update_policy``; the lines marked ``# echo`` and ``# guidance`` are the only additions.
        (EasyR1's loop: Copyright 2024 Bytedance Ltd. and/or its affiliates, Apache-2.0; see NOTICE.)"""
        guided = GuidedUpdate(self.guidance, data)  # guidance: LUFFY / UFT
        echo_batch = self.echo.active and ECHO_MASK in data.batch.keys()  # echo
        if not echo_batch and not guided.active:
            return super().update_policy(data)  # exactly EasyR1

        self.actor_module.train()

        temperature = data.meta_info["temperature"]  # temperature must be in the data.meta_info to avoid slient error
        select_keys = ["input_ids", "attention_mask", "position_ids", "responses", "response_mask"]
        select_keys.extend(["old_log_probs", "ref_log_probs", "advantages"])
        select_keys.extend([ECHO_MASK, ECHO_ROW, ECHO_WEIGHT, ECHO_CLIP_WEIGHT])  # echo
        select_keys.extend(guided.select_keys())  # guidance
        self._echo_coef = data.meta_info.get(ECHO_COEF, self.echo.coef)  # echo: lambda of this step
        non_tensor_select_keys = ["multi_modal_inputs"]

        # Split to make minibatch iterator for updating the actor
        # See PPO paper for details. https://arxiv.org/abs/1707.06347
        data, echo_rows = self._split_off_echo_rows(data.select(select_keys, non_tensor_select_keys))  # echo
        mini_batches = data.split(self.config.global_batch_size_per_device)
        echo_shares = self._echo_shares(echo_rows, len(mini_batches))  # echo: as many shares as mini-batches

        metrics = defaultdict(list)
        for _ in range(self.config.ppo_epochs):
            if self.rank == 0:
                mini_batches = tqdm(mini_batches, desc="Train mini-batches", position=1)

            for mini_batch, echo_share in zip(mini_batches, echo_shares):  # echo: each with its share of echo rows
                total_response_tokens = torch.sum(mini_batch.batch["response_mask"])
                dist.all_reduce(total_response_tokens, op=dist.ReduceOp.SUM)
                total_response_tokens = total_response_tokens.clamp(min=1)  # echo: no 0/0 (EasyR1 divides by it)
                total_clips = self._global_clip_count(mini_batch, echo_share) if echo_batch else 0  # echo
                guided.start_mini_batch(mini_batch)  # guidance

                if self.config.dynamic_batching:
                    max_input_len = mini_batch.batch["input_ids"].size(-1)
                    max_token_len = self.config.micro_batch_size_per_device_for_update * max_input_len
                    micro_batches, _ = prepare_dynamic_batch(mini_batch, max_token_len=max_token_len)
                else:
                    micro_batches = mini_batch.split(self.config.micro_batch_size_per_device_for_update)
                micro_batches = micro_batches + self._echo_micro_batches(echo_share, total_clips)  # echo

                if self.rank == 0:
                    micro_batches = tqdm(micro_batches, desc="Update policy", position=2)

                for micro_batch in micro_batches:
                    model_inputs = {**micro_batch.batch, **micro_batch.non_tensor_batch}
                    response_mask = model_inputs["response_mask"]
                    old_log_probs = model_inputs["old_log_probs"]
                    advantages = model_inputs["advantages"]

                    # all return: (bsz, response_length)
                    log_probs = guided.forward(self, model_inputs, temperature)  # guidance: UFT's hint log-probs too
                    echo_loss = self._echo_loss(log_probs, model_inputs, total_clips)  # echo
                    if micro_batch.meta_info.get(_ECHO_ROWS_ONLY):  # echo: no PG/KL term, no PG metrics
                        echo_loss.backward()
                        continue

                    luffy = guided.pg_loss(self.config, model_inputs, log_probs, metrics)  # guidance: expert rows
                    pg_loss, pg_metrics = luffy or compute_policy_loss(
                        old_log_probs=old_log_probs,
                        log_probs=log_probs,
                        advantages=advantages,
                        response_mask=response_mask,
                        clip_ratio_low=self.config.clip_ratio_low,
                        clip_ratio_high=self.config.clip_ratio_high,
                        clip_ratio_dual=self.config.clip_ratio_dual,
                        tau_positive=self.config.tau_positive,
                        tau_negative=self.config.tau_negative,
                        loss_type=self.config.loss_type,
                        loss_avg_mode=self.config.loss_avg_mode,
                    )
                    if self.config.use_kl_loss and "ref_log_probs" in model_inputs:
                        ref_log_probs = model_inputs["ref_log_probs"]
                        # compute kl loss
                        kld = compute_kl(
                            log_probs=log_probs,
                            ref_log_probs=ref_log_probs,
                            kl_penalty=self.config.kl_penalty,
                        )
                        kl_loss = average_loss(kld, response_mask, mode=self.config.loss_avg_mode)
                        loss = pg_loss + kl_loss * self.config.kl_coef
                        metrics["actor/kl_loss"] = kl_loss.detach().item()
                        metrics["actor/kl_coef"] = self.config.kl_coef
                    else:
                        loss = pg_loss

                    loss = loss * torch.sum(response_mask) * self.world_size / total_response_tokens
                    hint_term = guided.extra_loss(self.world_size)  # guidance: UFT's beta * hint NLL
                    if hint_term is not None:  # guidance
                        loss = loss + hint_term
                    if echo_loss is not None:  # echo
                        loss = loss + echo_loss
                    loss.backward()

                    batch_metrics = {f"actor/{k}": v for k, v in pg_metrics.items()}
                    batch_metrics["actor/pg_loss"] = pg_loss.detach().item()
                    append_to_dict(metrics, batch_metrics)

                grad_norm = self._optimizer_step()
                append_to_dict(metrics, {"actor/grad_norm": grad_norm.detach().item()})
                self._append_echo_metrics(metrics, total_clips)  # echo
                guided.end_mini_batch(metrics, self.world_size)  # guidance

        return metrics

    # the echo additions to update_policy, one job each

    def _split_off_echo_rows(self, data: DataProto) -> tuple[DataProto, DataProto | None]:
        """``(rows with a PG term, rows with the echo term only)``, each in its order; ``None`` without the latter.

        The first part is exactly the batch EasyR1 would update on (DAPO's kept groups), so its mini- and
        micro-batches are EasyR1's own whatever ``loss_avg_mode``; the echo rows (:data:`ECHO_ROW`) follow.
        """
        if ECHO_ROW not in data.batch.keys():
            return data, None
        is_echo_row = data.batch[ECHO_ROW].bool()
        if not bool(is_echo_row.any()):
            return data, None
        pg_rows = torch.nonzero(~is_echo_row).flatten().tolist()
        echo_rows = torch.nonzero(is_echo_row).flatten().tolist()
        if not pg_rows:
            raise ValueError(f"the update batch holds {len(echo_rows)} echo rows and no policy-gradient row")
        return data[pg_rows], data[echo_rows]

    def _echo_shares(self, echo_rows: DataProto | None, count: int) -> list[DataProto | None]:
        """The echo rows cut into ``count`` equal shares, one per mini-batch (the trainer pads them to fit)."""
        if echo_rows is None:
            return [None] * count
        share = len(echo_rows) // count
        micro = 1 if self.config.dynamic_batching else self.config.micro_batch_size_per_device_for_update
        if share * count != len(echo_rows) or share % micro:
            raise ValueError(
                f"{len(echo_rows)} echo rows on this rank do not split into {count} mini-batches of whole "
                f"micro-batches of {micro}: the trainer pads them to a multiple of world size x mini-batches"
                " x micro-batch size (echovl.easyr1.filtering.echo_row_unit)"
            )
        return echo_rows.chunk(count)

    def _global_clip_count(self, mini_batch: DataProto, echo_share: DataProto | None) -> int | float:
        """Clips of the mini-batch and its echo share, summed over all ranks (all ranks get the same number); with
        clip weights (:data:`ECHO_CLIP_WEIGHT`), their sum."""
        clips = _clip_count(mini_batch)
        if echo_share is not None:
            clips = clips + _clip_count(echo_share)
        dist.all_reduce(clips, op=dist.ReduceOp.SUM)
        self._echo_total = 0.0
        return clips.item()  # the one host sync echo adds, per mini-batch

    def _echo_micro_batches(self, echo_share: DataProto | None, total_clips: int) -> list[DataProto]:
        """Micro-batches of the echo rows, cut like EasyR1 cuts the PG rows; none when the mini-batch has no clip
        on any rank (every rank skips them alike, so FSDP's collectives stay in step)."""
        if echo_share is None or total_clips == 0:
            return []
        micro = self.config.micro_batch_size_per_device_for_update
        if self.config.dynamic_batching:
            max_token_len = micro * echo_share.batch["input_ids"].size(-1)
            micro_batches = prepare_dynamic_batch(echo_share, max_token_len=max_token_len)[0]
        else:
            micro_batches = echo_share.split(micro)
        for micro_batch in micro_batches:  # marked on the host: telling them apart costs no device sync
            micro_batch.meta_info = {**micro_batch.meta_info, _ECHO_ROWS_ONLY: True}
        return micro_batches

    def _echo_loss(
        self, log_probs: torch.Tensor, model_inputs: dict[str, Any], total_clips: int
    ) -> torch.Tensor | None:
        """``coef * echo_total * world_size / global_clips`` of one micro-batch (``None`` when the mini-batch has
        no clip): over micro-batches and ranks (FSDP averages), ``coef x`` the mean over the mini-batch's clips
        of each clip's mean NLL."""
        if total_clips == 0:
            return None
        if ECHO_WEIGHT in model_inputs:  # top_k / soft selection: weighted, possibly nested clips
            echo_total = weighted_echo_nll(log_probs, model_inputs[ECHO_WEIGHT])
        else:
            echo_total, _ = echo_nll(log_probs, model_inputs[ECHO_MASK])
        self._echo_total = self._echo_total + echo_total.detach()  # summed on the device: no sync here
        return echo_total * (self._echo_coef * self.world_size / total_clips)

    def _append_echo_metrics(self, metrics: dict[str, list], total_clips: int) -> None:
        """``echo/loss``: this rank's share of J_echo (the driver's mean over ranks is J_echo of the mini-batch)."""
        if total_clips:
            metrics["echo/loss"].append(float(self._echo_total) * self.world_size / total_clips)


def _clip_count(batch: DataProto) -> torch.Tensor:
    """This rank's clips in ``batch``: rows with clip tokens, or their summed clip weights (top_k / soft)."""
    if ECHO_CLIP_WEIGHT in batch.batch.keys():
        return batch.batch[ECHO_CLIP_WEIGHT].sum()
    return batch.batch[ECHO_MASK].any(dim=-1).sum()


def split_log_probs_and_entropy(both: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., 2]`` from :meth:`EchoActor.returning_entropy` -> ``(log_probs, entropy)``, contiguous."""
    if both.shape[-1] != 2:
        raise ValueError(f"expected log-probs and entropies stacked in a trailing dim of 2, got {tuple(both.shape)}")
    return both[..., 0].contiguous(), both[..., 1].contiguous()
