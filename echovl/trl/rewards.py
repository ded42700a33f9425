"""TRL reward functions for boxed math answers, built on :mod:`echovl.reward.math`.

TRL names a reward function by its ``__name__``, and :class:`~echovl.trl.EchoGRPOTrainer` takes the verified flags
from the reward function named ``echo.success_key`` (``"accuracy"`` by default): keep accuracy and format as two
functions and mix them with ``GRPOConfig.reward_weights``, e.g. ``reward_funcs=[accuracy, think_format]`` with
``reward_weights=[0.9, 0.1]`` (EasyR1's ``overall`` with ``format_weight=0.1``). Both read the dataset column
``answer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..reward.math import accuracy_score, format_score

__all__ = ["accuracy", "completion_text", "think_format"]


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a plain string, or a conversational ``[{"role", "content"}]`` list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # structured content blocks
            return "".join(block.get("text", "") for block in content if isinstance(block, dict))
        return str(content)
    raise TypeError(f"cannot read the text of a completion of type {type(completion).__name__}")


def accuracy(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the last ``\\boxed{}`` answer (after ``</think>``) equals the ``answer`` column, else 0.0."""
    if len(answer) != len(completions):
        raise ValueError(f"got {len(completions)} completions but {len(answer)} answers")
    return [accuracy_score(completion_text(c), str(a)) for c, a in zip(completions, answer)]


def think_format(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 for ``<think>...</think>`` followed by a ``\\boxed{}`` answer, else 0.0."""
    return [format_score(completion_text(c)) for c in completions]
