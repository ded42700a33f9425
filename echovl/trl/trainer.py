"""``EchoGRPOTrainer``: TRL's ``GRPOTrainer`` plus the EchoRL term.

Data flow, per generation batch (``_generate_and_score_completions``, before TRL shuffles and splits the batch):

1. **Entropy.** When TRL runs its old-log-prob forward (``gradient_accumulation_steps`` not a multiple of
   ``steps_per_generation * num_iterations``, e.g. ``num_iterations=2``; or vLLM with importance-sampling
   correction), the per-token entropy comes from that same call: TRL's fused LM head computes log-probs and entropy
   together, so it is free. Otherwise (TRL's default aligned setup) TRL has no such forward and echovl runs **one
   extra no-grad forward** over the generation batch; the EasyR1 integration pays none. Either way the entropy is
   at the sampling temperature, like the RL log-probs.
2. **Verified flags** from the reward function whose name is ``echo.success_key`` (``accuracy``): a rollout is
   verified when that function's value is ``>= echo.success_threshold``. TRL gathers rewards over processes.
3. **The echo step** over whole groups: response ids, masks and entropies are padded and gathered over processes,
   every process runs :class:`echovl.echo.EchoStep` on the global batch and keeps its own rows' clip tensors
   (``echo_weight``, ``echo_clip_weight``) and λ of the batch (``echo_coef``, a 0-dim tensor), which TRL's shuffle
   and split carry along with the other per-row tensors.

Per micro-batch (``_compute_loss``): :func:`echovl.loss.echo_term` of the log-probs of the loss forward (the same
tensor TRL's policy loss uses), with the batch's λ and the denominator ``C_step / num_processes``::

    loss = TRL loss + λ * total * num_processes / C_step

with ``total`` the micro-batch's weighted sum of per-clip mean NLLs and ``C_step`` the summed clip weight (the clip
count under ``max`` selection) of the optimizer step's micro-batches on all processes (counted once per generation
batch, after TRL's shuffle and split, in ``_prepare_inputs``). DDP averages gradients over processes and the step's
micro-batches add up, so every optimizer step gets exactly ``λ x`` (the weighted mean over its clips of the per-clip mean NLL), whatever
``gradient_accumulation_steps``, ``steps_per_generation``, ``num_iterations`` and ``loss_type`` (the RL term keeps
TRL's own normalisation; see docs/echo_scale.md). Only a step that spans several generation batches
(``steps_per_generation x num_iterations`` smaller than, or not a multiple of, ``gradient_accumulation_steps``)
cannot count the clips of a batch not generated yet: there each generation batch's part is normalised by its own
clips and weighs its share of the step's micro-batches.

With ``echo.enable=false`` or ``coef=0`` nothing is mined and the loss is exactly ``GRPOTrainer``'s. The outcome
fractions (``echo/degenerate_groups``, ``echo/all_wrong_groups``) are still logged when the success reward exists:
they are read from the rewards and change nothing. Echo applies to training only; evaluation loss is TRL's.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from ..clip import group_outcomes
from ..config import EchoConfig
from ..echo import ECHO_CLIP_WEIGHT, ECHO_WEIGHT, EchoStep, MinedBatch, verified_flags
from ..loss import echo_term
from ..traces import TraceWriter

__all__ = ["ECHO_COEF", "EchoGRPOTrainer"]

ECHO_COEF = "echo_coef"
"""Key of λ of a generation batch in TRL's per-batch dict (a 0-dim tensor: TRL's shuffle and split pass it along)."""

# the per-row inputs of TRL's policy forward, as `_compute_loss` passes them
_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def _as_echo_config(value: EchoConfig | Mapping[str, Any] | None) -> EchoConfig:
    if value is None:
        return EchoConfig()
    if isinstance(value, EchoConfig):
        value.validate()
        return value
    if isinstance(value, Mapping):
        return EchoConfig.from_dict(dict(value))
    raise TypeError(f"echo_config must be an EchoConfig or a dict, got {type(value).__name__}")


class EchoGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with the EchoRL term.

    Takes every argument of ``GRPOTrainer`` plus:

    Args:
        echo_config: :class:`echovl.EchoConfig` or a dict of its fields (default: ``EchoConfig()``, echo on with
            ``coef=0.001``).
        answer_column: dataset column written as the reference answer in trace files.

    The reward function named ``echo_config.success_key`` (default ``accuracy``, e.g.
    :func:`echovl.trl.accuracy`) gives the verified flags; give it weight 0 in ``GRPOConfig.reward_weights`` to
    use it for verification only.
    """

    def __init__(
        self,
        *args: Any,
        echo_config: EchoConfig | Mapping[str, Any] | None = None,
        answer_column: str = "answer",
        **kwargs,
    ) -> None:
        echo_config = _as_echo_config(echo_config)  # bad settings fail before the model is set up
        super().__init__(*args, **kwargs)
        self.echo_config = echo_config
        self.answer_column = answer_column
        names = list(self.reward_func_names)
        key = self.echo_config.success_key
        self._echo_success_index = names.index(key) if key in names else None
        if self.echo_config.active and self._echo_success_index is None:
            raise ValueError(
                f"echo.success_key={key!r} names no reward function; the reward functions are {names}. Name the "
                "per-sample accuracy reward function after echo.success_key (e.g. echovl.trl.accuracy) or set "
                "echo.success_key to its name."
            )
        self._echo_step = EchoStep(self._tokenizer, self.echo_config) if self.echo_config.active else None
        trace_dir = self.echo_config.trace_dir or os.path.join(self.args.output_dir, "echo_traces")
        self._echo_tracer = TraceWriter(trace_dir) if self.echo_config.trace_freq > 0 else None
        self._echo_traced_step = 0
        # hand-offs between TRL's methods and these overrides
        self._echo_rewards: torch.Tensor | None = None  # the rewards of the batch being scored
        self._echo_capture: str | None = None  # "entropy" (old-log-prob pass) or "logps" (loss forward): keep it
        self._echo_captured: torch.Tensor | None = None
        self._echo_split_clips: list[float] = []  # clip weight per split of the generation batch, all processes
        self._echo_generated_at = 0  # the micro-batch at which it was generated

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def echo_trace_dir(self) -> str | None:
        """Folder of the trace files (``None`` when ``trace_freq`` is 0)."""
        return str(self._echo_tracer.folder) if self._echo_tracer is not None else None

    def _echo_has_old_logps_pass(self) -> bool:
        """Whether TRL computes old per-token log-probs in ``_generate_and_score_completions`` (its condition)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or bool(
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, **kwargs
    ):
        """TRL's forward; hands over the entropy of the old-log-prob pass or the log-probs of the loss forward."""
        capture = self._echo_capture
        if capture == "entropy" and model is not self.model:  # e.g. the reference model's pass comes first
            capture = None
        if capture is not None:
            self._echo_capture = None  # only the first call
        if capture == "entropy":  # the first call on the policy in _generate_and_score_completions: old log-probs
            compute_entropy = True  # the fused LM head computes it anyway
        result = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, **kwargs
        )
        if capture is not None:
            self._echo_captured = result[1] if capture == "entropy" else result[0]
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._echo_rewards = rewards  # (num_processes * B, num_funcs), gathered, NaN where a function gave None
        return rewards

    def _echo_extra_entropy_forward(self, out: dict[str, Any]) -> torch.Tensor:
        """The no-grad forward TRL does not run in the aligned setup: per-token entropy of the completions."""
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        forward = {key: out[key] for key in _FORWARD_KEYS if out.get(key) is not None}
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            _, entropy, _ = super()._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                out["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
                compute_entropy=True,
                **forward,
            )
        return entropy

    def _echo_gather_rows(self, tensor: torch.Tensor, pad_index: int | float) -> torch.Tensor:
        """[B, T] per process -> [num_processes * B, max T] in process order."""
        if self.accelerator.num_processes == 1:
            return tensor
        tensor = self.accelerator.pad_across_processes(tensor.contiguous(), dim=1, pad_index=pad_index)
        return self.accelerator.gather(tensor)

    # ------------------------------------------------------------------------------------- generation batch
    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        mine = mode == "train" and self.echo_config.active
        self._echo_captured = None
        self._echo_capture = "entropy" if mine and self._echo_has_old_logps_pass() else None
        try:
            out = super()._generate_and_score_completions(inputs)
        finally:
            self._echo_capture = None
        if mode == "train" and self._echo_success_index is not None:
            self._echo_mine(inputs, out, mine)
        self._echo_rewards = None
        return out

    def _echo_mine(self, inputs: list[dict[str, Any]], out: dict[str, Any], mine: bool) -> None:
        metrics = self._metrics["train"]
        cfg = self.echo_config
        scores = self._echo_rewards[:, self._echo_success_index]
        verified = verified_flags(scores, cfg.success_threshold)
        group = torch.arange(verified.numel(), device=verified.device) // self.num_generations
        outcomes = group_outcomes(verified, group)
        for key, value in outcomes.metrics().items():
            metrics[key].append(value)
        if not mine:
            return
        train_step = self.state.global_step + 1  # the optimizer step this batch trains first (the logged "step")
        coef = cfg.coef_at(train_step, outcomes.degenerate_fraction)
        metrics["echo/coef"].append(coef)
        if coef == 0:  # before echo.start_step (or an adaptive lambda without all-correct groups): TRL's loss alone
            self._echo_captured = None
            return

        entropy, self._echo_captured = self._echo_captured, None
        if entropy is None:
            start = time.perf_counter()
            entropy = self._echo_extra_entropy_forward(out)
            metrics["timing_s/echo_entropy_forward"].append(time.perf_counter() - start)

        start = time.perf_counter()
        response_mask = out["completion_mask"]
        if out.get("tool_mask") is not None:
            response_mask = response_mask * out["tool_mask"]
        local_batch, local_length = out["completion_ids"].shape
        ids = self._echo_gather_rows(out["completion_ids"], self._tokenizer.pad_token_id)
        mask = self._echo_gather_rows(response_mask, 0).bool()
        entropy = self._echo_gather_rows(entropy.float(), 0.0)
        mined = self._echo_step.mine(ids, mask, entropy, verified, group)
        rows = slice(self.accelerator.process_index * local_batch, (self.accelerator.process_index + 1) * local_batch)
        out.update(mined.update_tensors(rows, local_length))
        out[ECHO_COEF] = torch.tensor(
            coef, device=ids.device
        )  # the micro-batches of this generation batch train with it
        for key, value in {**self._echo_step.clip_metrics([mined]), "echo/entropy": mined.mean_entropy()}.items():
            metrics[key].append(value)
        metrics["timing_s/echo_mining"].append(time.perf_counter() - start)

        freq = cfg.trace_freq
        if self._echo_tracer is not None and train_step // freq > self._echo_traced_step // freq:
            self._echo_traced_step = train_step
            rewards = (self._echo_rewards * self.reward_weights.to(ids.device).unsqueeze(0)).nansum(dim=1)
            self._echo_write_trace(train_step, inputs, out, rows, mined, rewards, scores)

    def _echo_write_trace(self, train_step, inputs, out, rows, mined: MinedBatch, rewards, scores) -> None:
        """Write up to ``trace_groups`` groups (mined first) of this batch; every process sends its prompts."""
        groups = mined.traced_groups(self.echo_config.trace_groups)
        first_rows = {int((mined.group == g).nonzero()[0]) for g in groups}
        local = []
        for index in range(rows.start, rows.stop):
            if index in first_rows:
                row = inputs[index - rows.start]
                prompt_ids = out["prompt_ids"][index - rows.start][out["prompt_mask"][index - rows.start].bool()]
                prompt = self._tokenizer.decode(prompt_ids, skip_special_tokens=True)
                image = row.get("image")
                if image is None and row.get("images"):
                    image = row["images"][0]
                local.append((index, prompt, str(row.get(self.answer_column, "")), image))
        gathered = gather_object(local)
        if not self.accelerator.is_main_process:
            return
        total = mined.responses.shape[0]
        prompts, answers, images = [""] * total, [""] * total, [None] * total
        for index, prompt, answer, image in gathered:
            prompts[index], answers[index], images[index] = prompt, answer, image
        records = mined.records(
            self._tokenizer,
            groups,
            train_step=train_step,
            prompts=prompts,
            answers=answers,
            rewards=rewards.tolist(),
            accuracy=scores.tolist(),
            images=images,
            source="trl",
        )
        self._echo_tracer.write(train_step, records)

    # ------------------------------------------------------------------------------------------------ loss
    def _prepare_inputs(self, generation_batch):
        """TRL's; when it has just generated (and shuffled and split) a batch, count the clips of each split."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        generating = self.model.training and (self._step % generate_every == 0 or self._buffered_inputs is None)
        inputs = super()._prepare_inputs(generation_batch)
        if generating and ECHO_WEIGHT in inputs:
            self._echo_count_clips(self._buffered_inputs)
        return inputs

    def _echo_count_clips(self, splits: list[dict[str, Any]]) -> None:
        """The summed clip weight of each of the generation batch's ``steps_per_generation`` splits, summed over
        processes (every process computes the same); split ``k % steps_per_generation`` trains micro-batch ``k``."""
        counts = torch.stack([split[ECHO_CLIP_WEIGHT].sum() for split in splits]).float()
        self._echo_split_clips = self.accelerator.reduce(counts, reduction="sum").tolist()
        self._echo_generated_at = self._step

    def _echo_step_clips(self) -> tuple[float, float]:
        """``(clips, share)`` of the optimizer step the current micro-batch belongs to.

        ``clips`` is the summed clip weight of every micro-batch (on every process) of the step that comes from the
        current generation batch; ``share`` is their fraction of the step's micro-batches. A step inside one
        generation batch (``gradient_accumulation_steps`` divides ``steps_per_generation x num_iterations``, TRL's
        default) has ``share`` 1: its exact clip count. A step that spans several generation batches cannot know
        the clips of the ones not generated yet, so each generation batch's part is normalised by its own clips and
        weighs its share of the step. Steps are windows of ``gradient_accumulation_steps`` micro-batches from the
        first, as TRL counts them.
        """
        accumulation = self.current_gradient_accumulation_steps
        step_start = self._step - self._step % accumulation
        lifetime = self.args.steps_per_generation * self.num_iterations  # micro-batches one generation batch serves
        start = max(step_start, self._echo_generated_at)
        stop = min(step_start + accumulation, self._echo_generated_at + lifetime)
        splits = self._echo_split_clips
        return sum(splits[k % len(splits)] for k in range(start, stop)), (stop - start) / accumulation

    def _echo_losses(self, model, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(TRL's loss, λ * normalised J_echo or None)`` of one micro-batch; the loss forward's log-probs are kept
        in ``_echo_captured`` (for subclasses that inspect the loss)."""
        self._echo_captured = None
        self._echo_capture = "logps"
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._echo_capture = None
        if ECHO_WEIGHT not in inputs:
            return loss, None
        clips, share = self._echo_step_clips()
        if clips <= 0:
            total = self._echo_captured.new_zeros(())
            echo = None
        else:  # DDP averages gradients over processes and the step's micro-batches add up: λ x the mean over clips
            coef = float(inputs[ECHO_COEF])
            echo, total = echo_term(
                self._echo_captured,
                inputs[ECHO_WEIGHT],
                coef=coef,
                clip_weight=clips / (self.accelerator.num_processes * share),
            )
        count = inputs[ECHO_CLIP_WEIGHT].sum()
        stats = self.accelerator.reduce(torch.stack([total.float(), count.float()]), reduction="sum")
        self._metrics["train"]["echo/loss"].append(float(stats[0] / stats[1]) if stats[1] > 0 else math.nan)
        return loss, echo

    def _compute_loss(self, model, inputs):
        loss, echo = self._echo_losses(model, inputs)
        return loss if echo is None else loss + echo
