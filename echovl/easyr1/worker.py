"""EchoWorker: EasyR1's ``FSDPWorker`` with an :class:`~echovl.easyr1.actor.EchoActor` and ``old_entropy``.

Every override keeps EasyR1's ``@register(dispatch_mode=...)`` decorator: the worker group only exposes methods
that carry it, so an undecorated override would silently vanish from the driver's view.

Ray pitfall: EasyR1 colocates roles in one process with ``create_colocated_worker_cls``, which subclasses the
*parent* of the user's class (``cls.__base__``) and calls its constructor without arguments. For
``class EchoWorker(FSDPWorker)`` that parent is ``FSDPWorker`` (whose constructor needs ``config`` and
``role``), so ``EchoWorker`` puts an argument-free shim first: its ``__base__`` is ``_WorkerShim``, a plain
``Worker``. Map both ``Role.ActorRolloutRef`` and ``Role.Critic`` to it (roles sharing a pool must share the
base).
"""

from __future__ import annotations

from verl.protocol import DataProto
from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.fsdp_workers import FSDPWorker

from .actor import EchoActor, split_log_probs_and_entropy

__all__ = ["EchoWorker"]


class _WorkerShim(Worker):
    """Argument-free base for Ray's colocated ``WorkerDict`` (see the module docstring)."""


class EchoWorker(_WorkerShim, FSDPWorker):
    """``FSDPWorker`` whose actor is an :class:`EchoActor` and whose ``compute_log_probs`` also returns
    ``old_entropy`` (fp32 [B, response_len]) when echo is active."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        super().init_model()
        if self._has_actor:  # the constructor is cheap and stateless: swap EasyR1's actor for ours
            self.actor = EchoActor(
                config=self.config.actor, actor_module=self.fsdp_module, actor_optimizer=self.optimizer
            )

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_log_probs(self, data: DataProto):
        if not self.actor.echo.active:
            return super().compute_log_probs(data)  # exactly EasyR1
        # EasyR1's method passes the actor's output through unchanged (Ulysses re-chunking splits rows, .to("cpu")),
        # so the entropy rides along as a trailing dim and is split off here.
        with self.actor.returning_entropy():
            output = super().compute_log_probs(data)
        log_probs, entropy = split_log_probs_and_entropy(output.batch["old_log_probs"])
        return DataProto.from_dict(
            tensors={"old_log_probs": log_probs, "old_entropy": entropy}, meta_info=output.meta_info
        )

    def _process_multi_modal_inputs(self, data: DataProto):
        # EasyR1 caches the processed images keyed on the uid array and compares it with ``==``, which raises when
        # a call brings a different number of rows (the dropped-group entropy pass of DAPO + echo). Start afresh.
        cached = self._cache.get("uid")
        if cached is not None and "uid" in data.non_tensor_batch and len(cached) != len(data.non_tensor_batch["uid"]):
            self._cache.clear()
        return super()._process_multi_modal_inputs(data)
