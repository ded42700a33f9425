"""Verifiable rewards and the grader shared with the evaluation. Each module is also a standalone EasyR1 reward file
(absolute imports only), usable as ``worker.reward.reward_function=<path to the module>:compute_score``."""

from .math import (
    Judgement,
    accuracy_score,
    answers_match,
    choice_letter,
    compute_score,
    extract_answer,
    format_score,
    grade,
    judge,
)

__all__ = [
    "Judgement",
    "accuracy_score",
    "answers_match",
    "choice_letter",
    "compute_score",
    "extract_answer",
    "format_score",
    "grade",
    "judge",
]
