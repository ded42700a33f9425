"""Math / Geometry3K reward: the answer in the last ``\\boxed{}`` graded with mathruler.

Per sample it returns ``overall``, ``format`` and ``accuracy``:

- ``format`` = 1 when the response is ``<think>...</think>`` followed by a ``\\boxed{...}`` answer;
- ``accuracy`` = 1 when the boxed answer (after ``</think>`` when there is one) equals the ground truth
  (mathruler's ``grade_answer``: LaTeX-aware, numeric and symbolic equivalence);
- ``overall`` = ``(1 - format_weight) * accuracy + format_weight * format``.

EchoRL's "verified" flag is ``accuracy`` (``echo.success_key``), never ``overall``. This file is loaded by
EasyR1 on its own (``reward_function=.../echovl/reward/math.py:compute_score``), so it imports nothing
relative.
"""

from __future__ import annotations

import re
from typing import Any

from mathruler.grader import extract_boxed_content, grade_answer

REWARD_NAME = "echovl_math"
REWARD_TYPE = "batch"

_TAG_SPACE = re.compile(r"\s*(<|>|/)\s*")  # some models write "< think >" or "</ think>"
_BOXED = re.compile(r"\\boxed\{.*\}", re.DOTALL)


def _normalise(response: str) -> str:
    return _TAG_SPACE.sub(r"\1", response.strip())


def format_score(response: str) -> float:
    """1.0 for a single ``<think>...</think>`` block followed by a boxed answer, else 0.0."""
    response = _normalise(response)
    if not response.startswith("<think>") or response.count("<think>") != 1 or response.count("</think>") != 1:
        return 0.0
    return 1.0 if _BOXED.search(response.split("</think>", 1)[1]) else 0.0


def accuracy_score(response: str, ground_truth: str) -> float:
    """1.0 when the last boxed answer (after the think block, if any) equals ``ground_truth``."""
    response = _normalise(response)
    answer_part = response.rsplit("</think>", 1)[-1]
    answer = extract_boxed_content(answer_part)
    if answer == "None":  # mathruler's "no boxed answer"
        return 0.0
    return 1.0 if grade_answer(answer, str(ground_truth)) else 0.0


def grade(response: str, ground_truth: str, format_weight: float = 0.1) -> dict[str, float]:
    """Score one response: ``{"overall", "format", "accuracy"}``."""
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {format_weight}")
    fmt = format_score(response)
    acc = accuracy_score(response, ground_truth)
    return {"overall": (1.0 - format_weight) * acc + format_weight * fmt, "format": fmt, "accuracy": acc}


def compute_score(reward_inputs: list[dict[str, Any]], format_weight: float = 0.1) -> list[dict[str, float]]:
    """EasyR1 batch reward function: ``reward_inputs`` are dicts with ``response`` and ``ground_truth``."""
    return [grade(item["response"], item["ground_truth"], format_weight) for item in reward_inputs]
