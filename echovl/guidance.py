"""GuidanceConfig: the ``guidance:`` section, which base method learns from the expert solutions and how.

- ``none``: the base method alone (GRPO, DAPO, ...), exactly as without this section.
- ``luffy`` (Yan et al. 2025): one row of each group is the prompt's expert solution (:mod:`echovl.expert`),
  trained with policy shaping (:func:`echovl.loss.shaped_pg_loss`), advantages over the whole group.
- ``uft`` (Liu et al. 2025): prompts carry a prefix of the solution as a hint (:mod:`echovl.hints`), whose
  tokens get an NLL term (:func:`echovl.loss.hint_nll`).

Both read the expert solution from the training data's ``solution_key`` column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ConfigSection
from .hints import HINT_SPLITS

__all__ = ["METHODS", "GuidanceConfig"]

METHODS = ("none", "luffy", "uft")


@dataclass
class GuidanceConfig(ConfigSection):
    """Expert-guided base method. Invalid values raise ``ValueError`` naming the key (``guidance.<key>``)."""

    SECTION = "guidance"

    method: str = "none"
    """``none``, ``luffy`` or ``uft``. With ``none`` training is exactly the base method."""
    solution_key: str = "solution"
    """Training-data column holding the expert solution (LUFFY's ``target``)."""

    # LUFFY
    shaping_gamma: float = 0.1
    """LUFFY: gamma of the policy shaping ``f(p) = p / (p + gamma)`` on the expert tokens."""
    adv_std: bool = False
    """LUFFY: divide the group advantage by the group's standard deviation. ``false`` is LUFFY's release
    (``r - mean(r)``); ``true`` is EasyR1's GRPO advantage."""
    clip_on_policy: bool = True
    """LUFFY: keep EasyR1's clipped PPO loss on the on-policy tokens. ``false`` drops the clipping (``-A * ratio``,
    LUFFY's release: ``loss_remove_clip``); only with ``worker.actor.loss_type: default``."""
    expert_in_clip_pool: bool = False
    """LUFFY + EchoRL: let the expert row give the EchoClip. ``false``: the clip pool is the verified on-policy
    rollouts only."""

    # UFT
    hint_low: float = 0.05
    """UFT: ``p_low`` of the hint schedule ``p(t) = low + (high - low) / 2 * (1 + cos(pi t / T))``."""
    hint_high: float = 0.95
    """UFT: ``p_high`` of the hint schedule."""
    hint_steps: int = 300
    """UFT: ``T_hint``, the last training step with hints."""
    hint_coef: float = 0.001
    """UFT: ``beta``, weight of the mean NLL over the hint tokens."""
    hint_max_parts: int = 5
    """UFT: a solution is cut into at most this many parts; ``k ~ Binomial(parts, p(t))`` of them form the hint."""
    hint_split: str = "lines"
    """UFT: the units parts are made of: ``lines`` or ``sentences``."""

    @property
    def active(self) -> bool:
        return self.method != "none"

    @property
    def luffy(self) -> bool:
        return self.method == "luffy"

    @property
    def uft(self) -> bool:
        return self.method == "uft"

    def validate(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"guidance.{key} {why}, got {getattr(self, key)!r}")

        def number(key: str) -> float:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(key, "must be a finite number")
            return value

        if self.method not in METHODS:
            raise bad("method", f"must be one of {', '.join(METHODS)}")
        if not isinstance(self.solution_key, str) or not self.solution_key:
            raise bad("solution_key", "must be the name of the training data's expert-solution column")
        if number("shaping_gamma") <= 0:
            raise bad("shaping_gamma", "must be > 0")
        for key in ("adv_std", "clip_on_policy", "expert_in_clip_pool"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "must be true or false")
        for key in ("hint_low", "hint_high"):
            if not 0 <= number(key) <= 1:
                raise bad(key, "must be a probability in [0, 1]")
        if self.hint_low > self.hint_high:
            raise bad("hint_low", f"must be <= guidance.hint_high ({self.hint_high})")
        if number("hint_coef") < 0:
            raise bad("hint_coef", "must be >= 0 (0: no hint NLL term)")
        for key in ("hint_steps", "hint_max_parts"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(key, "must be an integer >= 1")
        if self.hint_split not in HINT_SPLITS:
            raise bad("hint_split", f"must be one of {', '.join(HINT_SPLITS)}")
