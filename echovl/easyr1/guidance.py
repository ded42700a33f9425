"""The ``guidance:`` section on EasyR1: what LUFFY (:mod:`.luffy`) and UFT (:mod:`.uft`) add to the trainer and
the actor, behind a few hooks in :class:`~.trainer.EchoTrainer` and :class:`~.actor.EchoActor`.

- :func:`check_guidance`: the settings the methods need from the rest of the run (called by the config).
- :func:`check_solution_column`: the training file has the expert-solution column (before Ray starts).
- :class:`GuidedLoader`: the training data loader, passing each batch through the method (UFT: hints) and keeping
  it for the generation hook (LUFFY: the solutions of the batch being generated).
- :func:`make_guide`: the method's driver-side part (:class:`LuffyGuide`, :class:`UftGuide`).
- :class:`GuidedUpdate`: the method's part of one ``update_policy`` call (LUFFY's loss on expert rows, UFT's
  hint term). With ``method: none``, or a batch without the method's keys, nothing of it runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from verl.protocol import DataProto

from ..config import GuidanceConfig
from ..uft import hint_nll
from .luffy import EXPERT_ROW, ExpertRollout, ExpertStats, expert_metrics, luffy_advantages, luffy_pg_loss
from .uft import HINT_LENGTH, HintMaker, forward_with_hints, hinted_reward

__all__ = [
    "GuidedLoader",
    "GuidedUpdate",
    "LuffyGuide",
    "UftGuide",
    "check_guidance",
    "check_solution_column",
    "make_guide",
]


# ------------------------------------------------------------------------------------------- config checks


def check_guidance(config) -> None:
    """Raise ``ValueError`` when the run's other settings do not fit ``config.guidance`` (an EasyR1 PPOConfig)."""
    guidance: GuidanceConfig = config.guidance
    if not guidance.active:
        return
    method = guidance.method
    if config.algorithm.online_filtering:
        raise ValueError(
            f"guidance.method={method} does not support algorithm.online_filtering (DAPO): its filter scores the "
            "rollouts without the expert row/hint. Set algorithm.online_filtering=false."
        )
    if guidance.uft and config.algorithm.adv_estimator == "remax":
        raise ValueError(
            "guidance.method=uft does not support algorithm.adv_estimator=remax: REMAX's baseline is a greedy "
            "response scored without its hint, while UFT's reward scores hint + response. Use another "
            "algorithm.adv_estimator (grpo, rloo, reinforce_plus_plus, grpo_passk or gae)."
        )
    if guidance.luffy:
        if config.algorithm.adv_estimator != "grpo":
            raise ValueError(
                f"guidance.method=luffy needs algorithm.adv_estimator=grpo (group advantages over the rollouts and "
                f"the expert row), got {config.algorithm.adv_estimator!r}"
            )
        if config.worker.rollout.n < 2:
            raise ValueError(f"guidance.method=luffy needs worker.rollout.n >= 2, got {config.worker.rollout.n}")
        if not guidance.clip_on_policy and config.worker.actor.loss_type != "default":
            raise ValueError(
                "guidance.clip_on_policy=false (PPO's loss without clipping) needs worker.actor.loss_type=default, "
                f"got {config.worker.actor.loss_type!r}"
            )


def _first_record(path: str) -> set[str] | None:
    """Column names of a local parquet / JSON(L) / CSV file or folder of them; None if it is not local."""
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if not f.startswith("."))
        return _first_record(os.path.join(path, files[0])) if files else None
    if not os.path.isfile(path):
        return None
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return set(pq.read_schema(path).names)
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            line = next((line for line in f if line.strip()), "{}")
            return set(json.loads(line))
        if path.endswith(".json"):
            data = json.load(f)
            return set(data[0] if isinstance(data, list) and data else data)
        if path.endswith(".csv"):
            return set(f.readline().strip().split(","))
    return None


def check_solution_column(config) -> None:
    """Raise ``ValueError`` when the guided method's training file has no expert-solution column (a local file
    or folder; a hub dataset is checked on its first batch instead)."""
    guidance: GuidanceConfig = config.guidance
    if not guidance.active or not config.data.train_files:
        return
    path = config.data.train_files.split("@", 1)[0]
    columns = _first_record(path)
    if columns is not None and guidance.solution_key not in columns:
        raise ValueError(
            f"guidance.method={guidance.method} needs the expert solution in column '{guidance.solution_key}' "
            f"(guidance.solution_key) of data.train_files, but {path} has: {', '.join(sorted(columns))}. "
            "data_prep/openr1_math.py writes it."
        )


# ------------------------------------------------------------------------------------------- driver side


class GuidedLoader:
    """The training data loader, each batch passed through ``transform`` as it is drawn; the last one is kept
    (:meth:`take`) for the generation hook. Everything else (``len``, ``state_dict``, ...) is the loader's."""

    def __init__(self, loader, transform: Callable[[dict[str, Any]], dict[str, Any]]):
        self.loader = loader
        self.transform = transform
        self._pending: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            batch = self.transform(batch)
            self._pending = batch
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def take(self, gen_batch: DataProto) -> dict[str, Any] | None:
        """The batch last drawn, if ``gen_batch`` holds its prompts (a training generation), once."""
        pending = self._pending
        raw = gen_batch.non_tensor_batch.get("raw_prompt_ids")
        if pending is None or raw is None or len(raw) != len(pending["raw_prompt_ids"]):
            return None
        if not all(list(a) == list(b) for a, b in zip(raw, pending["raw_prompt_ids"])):
            return None
        self._pending = None
        return pending


def _check_column(batch: dict[str, Any], key: str, method: str) -> None:
    if key not in batch:
        raise KeyError(
            f"{method}: the training batch has no '{key}' column (guidance.solution_key); its columns: "
            f"{', '.join(sorted(batch))}"
        )


class LuffyGuide:
    """LUFFY's driver side: expert rows at generation, LUFFY's advantage and metrics before the update."""

    def __init__(self, trainer):
        config = trainer.config
        self.guidance: GuidanceConfig = config.guidance
        self.trainer = trainer
        self.rollout: ExpertRollout | None = None
        self.loader = GuidedLoader(trainer.train_dataloader, self._check)

    def _check(self, batch: dict[str, Any]) -> dict[str, Any]:
        _check_column(batch, self.guidance.solution_key, "LUFFY")
        return batch

    def wrap_workers(self, worker_group) -> None:
        config = self.trainer.config
        self.rollout = ExpertRollout(
            self.trainer.tokenizer,
            n=config.worker.rollout.n,
            seed=config.worker.rollout.seed,
            world_size=worker_group.world_size,
        )
        generate = worker_group.generate_sequences

        def generate_sequences(gen_batch: DataProto) -> DataProto:
            pending = self.loader.take(gen_batch)
            if pending is None:  # validation, or anything but a training batch
                return generate(gen_batch)
            return self.rollout(generate, gen_batch, pending[self.guidance.solution_key])

        worker_group.generate_sequences = generate_sequences

    def start_step(self) -> None:
        if self.rollout is not None:
            self.rollout.stats = ExpertStats()

    def after_batch(self, batch: DataProto, metrics: dict[str, Any]) -> tuple[DataProto, dict[str, list] | None]:
        return batch, None  # EasyR1's fit scores the batch (the expert rows included)

    def prepare(
        self, batch: DataProto, scores: np.ndarray
    ) -> tuple[dict[str, float], torch.Tensor | None, torch.Tensor]:
        """LUFFY's advantages (in place) and metrics; the rows that may give an EchoClip (None: all); the
        on-policy rows."""
        luffy_advantages(batch, use_std=self.guidance.adv_std)
        metrics = expert_metrics(batch, scores, self.rollout.stats if self.rollout else ExpertStats())
        on_policy = ~batch.batch[EXPERT_ROW].bool()
        return metrics, None if self.guidance.expert_in_clip_pool else on_policy, on_policy


class UftGuide:
    """UFT's driver side: hints as batches are drawn, the reward on hint + response, the ``uft/*`` metrics."""

    def __init__(self, trainer):
        config = trainer.config
        self.guidance: GuidanceConfig = config.guidance
        self.trainer = trainer
        self.hints = HintMaker(
            trainer.tokenizer,
            self.guidance,
            seed=config.data.seed,
            max_prompt_length=config.data.max_prompt_length,
            step=lambda: trainer.global_step,
        )
        self.loader = GuidedLoader(trainer.train_dataloader, self._hint)

    def _hint(self, batch: dict[str, Any]) -> dict[str, Any]:
        _check_column(batch, self.guidance.solution_key, "UFT")
        return self.hints(batch)

    def wrap_workers(self, worker_group) -> None:
        pass

    def start_step(self) -> None:
        self.hints.stats = type(self.hints.stats)()

    def after_batch(self, batch: DataProto, metrics: dict[str, Any]) -> tuple[DataProto, dict[str, list] | None]:
        """Score the rows on hint + response (``token_level_scores`` is then set, so EasyR1's ``fit`` does not
        score the response alone); returns the per-sample reward metrics too."""
        from verl.trainer.ray_trainer import reduce_metrics

        scores, reward_metrics = hinted_reward(self.trainer.reward_fn, batch)
        batch.batch["token_level_scores"] = scores
        metrics.update({f"reward/{k}": v for k, v in reduce_metrics(reward_metrics).items()})
        return batch, reward_metrics

    def prepare(self, batch: DataProto, scores: np.ndarray) -> tuple[dict[str, float], None, None]:
        """The ``uft/*`` metrics (every row is on-policy: the hint is context, never part of a clip)."""
        return self.hints.metrics(), None, None


def make_guide(trainer) -> LuffyGuide | UftGuide | None:
    """The driver side of ``trainer.config.guidance`` (None for ``method: none``)."""
    guidance: GuidanceConfig = trainer.config.guidance
    if guidance.luffy:
        return LuffyGuide(trainer)
    if guidance.uft:
        return UftGuide(trainer)
    return None


# ------------------------------------------------------------------------------------------- actor side


class GuidedUpdate:
    """The guided method's part of one ``update_policy`` call.

    LUFFY (batches with ``expert_row``): :meth:`pg_loss` gives the PG loss of micro-batches holding an expert
    row. UFT (batches with ``hint_length`` and ``hint_coef > 0``): :meth:`forward` also returns the hint tokens'
    log-probs, and :meth:`extra_loss` adds ``hint_coef * total * world_size / global_hint_tokens`` per
    micro-batch (like EasyR1's token-mean), so that over micro-batches and ranks the term is ``beta`` times the
    mean NLL over the mini-batch's hint tokens.
    """

    def __init__(self, guidance: GuidanceConfig | None, data: DataProto):
        guidance = guidance or GuidanceConfig()
        keys = data.batch.keys()
        self.guidance = guidance
        self.luffy = guidance.luffy and EXPERT_ROW in keys
        self.uft = guidance.uft and HINT_LENGTH in keys and guidance.hint_coef > 0
        self.active = self.luffy or self.uft
        self._hint: tuple[torch.Tensor, torch.Tensor] | None = None
        self._total_hint_tokens: torch.Tensor | None = None
        self._with_hints = False
        self._hint_sum: torch.Tensor | float = 0.0

    def select_keys(self) -> list[str]:
        return [EXPERT_ROW] * self.luffy + [HINT_LENGTH] * self.uft

    def start_mini_batch(self, mini_batch: DataProto) -> None:
        if self.uft:
            total = mini_batch.batch[HINT_LENGTH].sum()
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            self._total_hint_tokens = total
            self._with_hints = bool(total > 0)  # the one host sync the hint term adds, per mini-batch
            self._hint_sum = 0.0

    def forward(self, actor, model_inputs: dict[str, Any], temperature: float) -> torch.Tensor:
        if not self.uft:
            return actor._forward_micro_batch(model_inputs, temperature=temperature)
        log_probs, hint_log_probs, hint_mask = forward_with_hints(actor, model_inputs, temperature)
        self._hint = (hint_log_probs, hint_mask)
        return log_probs

    def pg_loss(self, config, model_inputs: dict[str, Any], log_probs: torch.Tensor, metrics: dict[str, list]):
        """LUFFY's PG loss and metrics when the micro-batch holds an expert row (or always, without on-policy
        clipping), else None: EasyR1's own."""
        if not self.luffy or (self.guidance.clip_on_policy and not bool(model_inputs[EXPERT_ROW].any())):
            return None
        loss, pg_metrics, extra = luffy_pg_loss(config, model_inputs, log_probs, self.guidance)
        for key, value in extra.items():
            metrics[key].append(value)
        return loss, pg_metrics

    def extra_loss(self, world_size: int) -> torch.Tensor | None:
        """UFT's hint term of the micro-batch just forwarded (None: nothing to add)."""
        if not self.uft or self._hint is None:
            return None
        (hint_log_probs, hint_mask), self._hint = self._hint, None
        if not self._with_hints:
            return None
        total, _ = hint_nll(hint_log_probs, hint_mask)
        self._hint_sum = self._hint_sum + total.detach()
        return self.guidance.hint_coef * total * world_size / self._total_hint_tokens

    def end_mini_batch(self, metrics: dict[str, list], world_size: int) -> None:
        if self.uft and self._with_hints:  # this rank's share; the driver's mean over ranks is the mean NLL
            metrics["uft/hint_nll"].append(float(self._hint_sum) * world_size / int(self._total_hint_tokens))
