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

The echo term. ``update_policy`` is EasyR1's loop with a few marked additions (:class:`EchoUpdate`). Per
micro-batch it adds :func:`echovl.loss.echo_term` of the log-probs the PG loss already uses, with the step's λ
(``meta_info[ECHO_COEF]``, set by the trainer) and the denominator ``global_clip_weight / world_size``: the summed
clip weight (:data:`~echovl.echo.ECHO_CLIP_WEIGHT`, the clip count under ``max`` selection) of the mini-batch over
all ranks, all-reduced like EasyR1's token count. EasyR1 scales the PG loss to ``sum(l * mask) * world_size /
global_tokens`` per micro-batch and FSDP averages gradients over ranks, so the two terms add up, over micro-batches
and ranks, to EasyR1's PG loss + λ x (the weighted mean over the mini-batch's clips of each clip's mean NLL), for
``loss_avg_mode`` token and seq alike (the echo term never touches EasyR1's averaging).

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

from ..config import EchoConfig, GuidanceConfig
from ..echo import ECHO_CLIP_WEIGHT, ECHO_WEIGHT
from ..entropy import token_entropy
from ..loss import echo_term
from .guidance import GuidedUpdate

__all__ = ["ECHO_CLIP_WEIGHT", "ECHO_COEF", "ECHO_ROW", "ECHO_WEIGHT", "EchoActor", "EchoUpdate"]

ECHO_ROW = "echo_row"
"""Batch key ([B] bool) of rows that carry the echo term only: the clip rollouts of the all-correct groups DAPO's
filter dropped (zero advantage, ``response_mask`` 0). The update trains them after the PG rows of each
mini-batch, in micro-batches of their own."""

ECHO_COEF = "echo_coef"
"""``meta_info`` key: λ of this training step (the trainer's schedule, ``EchoConfig.coef_at``); required beside the
clip tensors (:data:`~echovl.echo.ECHO_WEIGHT`, :data:`~echovl.echo.ECHO_CLIP_WEIGHT`)."""

_ECHO_ROWS_ONLY = "echovl_echo_rows_only"
"""``meta_info`` flag of the micro-batches :meth:`EchoUpdate.micro_batches` cuts from the echo rows."""


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
        echo = EchoUpdate(self, data)  # echo
        if not echo.active and not guided.active:
            return super().update_policy(data)  # exactly EasyR1

        self.actor_module.train()

        temperature = data.meta_info["temperature"]  # temperature must be in the data.meta_info to avoid slient error
        select_keys = ["input_ids", "attention_mask", "position_ids", "responses", "response_mask"]
        select_keys.extend(["old_log_probs", "ref_log_probs", "advantages"])
        select_keys.extend(echo.select_keys())  # echo
        select_keys.extend(guided.select_keys())  # guidance
        non_tensor_select_keys = ["multi_modal_inputs"]

        # Split to make minibatch iterator for updating the actor
        # See PPO paper for details. https://arxiv.org/abs/1707.06347
        data, echo_rows = echo.split(data.select(select_keys, non_tensor_select_keys))  # echo: echo rows apart
        mini_batches = data.split(self.config.global_batch_size_per_device)
        echo_shares = echo.shares(echo_rows, len(mini_batches))  # echo: as many shares as mini-batches

        metrics = defaultdict(list)
        for _ in range(self.config.ppo_epochs):
            if self.rank == 0:
                mini_batches = tqdm(mini_batches, desc="Train mini-batches", position=1)

            for mini_batch, echo_share in zip(mini_batches, echo_shares):  # echo: each with its share of echo rows
                total_response_tokens = torch.sum(mini_batch.batch["response_mask"])
                dist.all_reduce(total_response_tokens, op=dist.ReduceOp.SUM)
                total_response_tokens = total_response_tokens.clamp(min=1)  # echo: no 0/0 (EasyR1 divides by it)
                echo.start_mini_batch(mini_batch, echo_share)  # echo
                guided.start_mini_batch(mini_batch)  # guidance

                if self.config.dynamic_batching:
                    max_input_len = mini_batch.batch["input_ids"].size(-1)
                    max_token_len = self.config.micro_batch_size_per_device_for_update * max_input_len
                    micro_batches, _ = prepare_dynamic_batch(mini_batch, max_token_len=max_token_len)
                else:
                    micro_batches = mini_batch.split(self.config.micro_batch_size_per_device_for_update)
                micro_batches = micro_batches + echo.micro_batches(echo_share)  # echo: echo rows after the PG rows

                if self.rank == 0:
                    micro_batches = tqdm(micro_batches, desc="Update policy", position=2)

                for micro_batch in micro_batches:
                    model_inputs = {**micro_batch.batch, **micro_batch.non_tensor_batch}
                    response_mask = model_inputs["response_mask"]
                    old_log_probs = model_inputs["old_log_probs"]
                    advantages = model_inputs["advantages"]

                    # all return: (bsz, response_length)
                    log_probs = guided.forward(self, model_inputs, temperature)  # guidance: UFT's hint log-probs too
                    echo_loss = echo.loss(log_probs, model_inputs)  # echo
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
                echo.end_mini_batch(metrics)  # echo
                guided.end_mini_batch(metrics, self.world_size)  # guidance

        return metrics


class EchoUpdate:
    """The echo term's part of one ``update_policy`` call (see the module docstring).

    Active when echo is on and the batch holds clips (:data:`~echovl.echo.ECHO_WEIGHT`); λ is the batch's
    ``meta_info[ECHO_COEF]``. Echo rows (:data:`ECHO_ROW`, DAPO's dropped all-correct groups) are taken out before
    EasyR1's mini-batch split (:meth:`split`), so the PG rows are split exactly as EasyR1 splits them, and trained
    after each mini-batch's PG micro-batches in micro-batches of their own (:meth:`micro_batches`).
    """

    def __init__(self, actor: EchoActor, data: DataProto):
        self.config = actor.config
        self.world_size = actor.world_size
        self.active = actor.echo.active and ECHO_WEIGHT in data.batch.keys()
        self.coef = 0.0
        if self.active:
            if ECHO_COEF not in data.meta_info:
                raise KeyError(
                    f"the update batch holds EchoClips ({ECHO_WEIGHT}) but no meta_info['{ECHO_COEF}']: the trainer "
                    "sets λ of the step there (echovl.easyr1.trainer.EchoTrainer.prepare_update)"
                )
            self.coef = float(data.meta_info[ECHO_COEF])
        self.total_clips: float = 0.0
        self.nll_sum: torch.Tensor | float = 0.0

    def select_keys(self) -> list[str]:
        return [ECHO_WEIGHT, ECHO_CLIP_WEIGHT, ECHO_ROW] if self.active else []

    def split(self, data: DataProto) -> tuple[DataProto, DataProto | None]:
        """``(rows with a PG term, rows with the echo term only)``, each in its order; ``None`` without the latter.

        The first part is exactly the batch EasyR1 would update on (DAPO's kept groups), so its mini- and
        micro-batches are EasyR1's own whatever ``loss_avg_mode``; the echo rows (:data:`ECHO_ROW`) follow.
        """
        if ECHO_ROW not in data.batch.keys() or not bool(data.batch[ECHO_ROW].any()):
            return data, None
        is_echo_row = data.batch[ECHO_ROW].bool()
        pg_rows = torch.nonzero(~is_echo_row).flatten().tolist()
        echo_rows = torch.nonzero(is_echo_row).flatten().tolist()
        if not pg_rows:
            raise ValueError(f"the update batch holds {len(echo_rows)} echo rows and no policy-gradient row")
        return data[pg_rows], data[echo_rows]

    def shares(self, echo_rows: DataProto | None, count: int) -> list[DataProto | None]:
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

    def start_mini_batch(self, mini_batch: DataProto, echo_share: DataProto | None) -> None:
        """The summed clip weight of the mini-batch and its echo share over all ranks (every rank gets the same);
        the one host sync echo adds, per mini-batch."""
        self.nll_sum = 0.0
        if not self.active:
            return
        clips = mini_batch.batch[ECHO_CLIP_WEIGHT].sum()
        if echo_share is not None:
            clips = clips + echo_share.batch[ECHO_CLIP_WEIGHT].sum()
        dist.all_reduce(clips, op=dist.ReduceOp.SUM)
        self.total_clips = clips.item()

    def micro_batches(self, echo_share: DataProto | None) -> list[DataProto]:
        """Micro-batches of the echo rows, cut like EasyR1 cuts the PG rows; none when the mini-batch has no clip on
        any rank (every rank skips them alike, so FSDP's collectives stay in step)."""
        if echo_share is None or not self.total_clips:
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

    def loss(self, log_probs: torch.Tensor, model_inputs: dict[str, Any]) -> torch.Tensor | None:
        """λ x J_echo's share of one micro-batch (``None`` when the mini-batch has no clip on any rank)."""
        if not self.active or not self.total_clips:
            return None
        term, total = echo_term(
            log_probs, model_inputs[ECHO_WEIGHT], coef=self.coef, clip_weight=self.total_clips / self.world_size
        )
        self.nll_sum = self.nll_sum + total  # summed on the device: no sync here
        return term

    def end_mini_batch(self, metrics: dict[str, list]) -> None:
        """``echo/loss``: this rank's share of J_echo (the driver's mean over ranks is J_echo of the mini-batch)."""
        if self.active and self.total_clips:
            metrics["echo/loss"].append(float(self.nll_sum) * self.world_size / self.total_clips)


def split_log_probs_and_entropy(both: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., 2]`` from :meth:`EchoActor.returning_entropy` -> ``(log_probs, entropy)``, contiguous."""
    if both.shape[-1] != 2:
        raise ValueError(f"expected log-probs and entropies stacked in a trailing dim of 2, got {tuple(both.shape)}")
    return both[..., 0].contiguous(), both[..., 1].contiguous()
