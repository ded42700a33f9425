"""The echo coefficient over training: a start step and a schedule for lambda."""

from __future__ import annotations

__all__ = ["COEF_SCHEDULES", "echo_coef"]

COEF_SCHEDULES = ("constant", "linear", "adaptive")


def echo_coef(
    coef: float,
    step: int,
    *,
    start_step: int = 0,
    schedule: str = "constant",
    warmup_steps: int = 0,
    degenerate_fraction: float | None = None,
) -> float:
    """lambda_t, the weight of J_echo on training step ``step`` (counted from 1, as EasyR1 and TRL log it).

    - ``step < start_step``: 0 (no echo before ``start_step``; 0 or 1 = from the first step).
    - ``constant``: ``coef``.
    - ``linear``: ``coef * min(1, (step - start_step' + 1) / warmup_steps)`` with ``start_step' =
      max(start_step, 1)``: a linear warm-up from ``coef / warmup_steps`` to ``coef`` over ``warmup_steps``
      steps (``warmup_steps`` 0 or 1: ``coef`` at once).
    - ``adaptive``: ``coef * d_t``, with ``d_t`` the fraction of the step's groups whose rollouts are all
      verified (degenerate: zero advantages), so the echo term grows as GRPO's signal shrinks.

    Args:
        coef: lambda (>= 0).
        step: the training step (>= 1).
        start_step: first step with the echo term.
        schedule: one of :data:`COEF_SCHEDULES`.
        warmup_steps: length of the linear warm-up.
        degenerate_fraction: ``d_t`` in [0, 1]; required for ``adaptive``.

    The settings are checked where they enter (:class:`echovl.config.EchoConfig`).
    """
    if step < start_step:
        return 0.0
    if schedule == "constant":
        return coef
    if schedule == "linear":
        return coef * min(1.0, (step - max(start_step, 1) + 1) / max(warmup_steps, 1))
    if schedule == "adaptive":
        return coef * degenerate_fraction
    raise ValueError(f"unknown λ schedule {schedule!r}: one of {', '.join(COEF_SCHEDULES)}")
