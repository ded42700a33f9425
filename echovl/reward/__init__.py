"""Verifiable rewards. Each module is also a standalone EasyR1 reward file (absolute imports only), usable as
``worker.reward.reward_function=<path to the module>:compute_score``."""

from .math import accuracy_score, compute_score, format_score, grade

__all__ = ["accuracy_score", "compute_score", "format_score", "grade"]
