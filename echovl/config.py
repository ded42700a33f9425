"""The config sections echovl adds to a training config: ``echo:`` (:class:`EchoConfig`, EchoRL) and ``guidance:``
(:class:`GuidanceConfig`, the base methods that learn from expert solutions: LUFFY, UFT).

Every setting is checked here, where it enters; the core functions that use them check only shapes.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from .clip import SCOPES, SELECTIONS
from .schedule import COEF_SCHEDULES, echo_coef
from .uft import HINT_SPLITS

__all__ = ["METHODS", "ConfigSection", "EchoConfig", "GuidanceConfig", "reject_unknown_keys", "unescape"]


def reject_unknown_keys(cls, values: dict[str, Any], section: str) -> None:
    """Raise ``ValueError`` for a key of ``values`` that is not a field of the dataclass ``cls``, naming the
    closest valid key (``Unknown key echo.coeff. Did you mean echo.coef?``)."""
    known = [f.name for f in fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {section}.{close[0]}?" if close else ""
            raise ValueError(f"Unknown key {section}.{key}.{hint} Valid keys: {', '.join(known)}.")


class ConfigSection:
    """What a dataclass config section shares: validation on construction and on EasyR1's ``post_init``,
    ``from_dict`` rejecting unknown keys, ``to_dict``. Subclasses set ``SECTION`` and define ``validate``."""

    SECTION = ""

    def __post_init__(self) -> None:
        self.validate()

    def post_init(self) -> None:
        """EasyR1 calls ``post_init`` on every config section after merging; validate again."""
        self.validate()

    def validate(self) -> None:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None):
        """Build from a plain mapping, rejecting unknown keys with the closest valid name."""
        values = dict(values or {})
        reject_unknown_keys(cls, values, cls.SECTION)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ESCAPES = {"\\n": "\n", "\\r": "\r", "\\t": "\t"}


def unescape(text: str) -> str:
    """A delimiter as typed on a command line, in single-quoted YAML or in the demo's form: ``\\n`` newline, ``\\r``
    carriage return, ``\\t`` tab (nobody means a backslash and an ``n``: it would split ``\\neq``)."""
    for escaped, char in _ESCAPES.items():
        text = text.replace(escaped, char)
    return text


@dataclass
class EchoConfig(ConfigSection):
    """EchoRL settings. Invalid values raise ``ValueError`` naming the key (``echo.<key>``)."""

    SECTION = "echo"

    enable: bool = True
    """Add the echo term. With ``false`` (or ``coef: 0``) training is exactly the base method."""
    coef: float = 0.001
    """lambda: weight of J_echo in ``loss = rl_loss + coef * J_echo``."""
    delimiters: list[str] = field(default_factory=lambda: ["\n"])
    """A token whose text contains one of these ends a reasoning step (``\\n`` typed literally means newline)."""
    min_step_tokens: int = 2
    """A step needs at least this many text tokens to be chosen. 2: a one-token step's "mean" entropy is one token's,
    the single-token noise the paper's averaging over a step exists to avoid; on every measured trace (the shipped
    demo traces and the CPU experiment's) 2 chooses the same clips as 1 (docs/echo_settings.md)."""
    scope: str = "all"
    """``all``: mine every group with a verified rollout. ``degenerate``: only all-correct groups."""
    selection: str = "max"
    """Clips per group. ``max`` (the paper): the highest-entropy step. ``top_k``: the ``top_k`` highest-entropy
    steps, each a clip of weight 1 (two may lie in one rollout: nested prefixes). ``soft``: every eligible step,
    weighted by a softmax of step entropy / ``soft_temperature`` (a group's weights sum to 1)."""
    top_k: int = 2
    """Clips per group with ``selection: top_k``."""
    soft_temperature: float = 1.0
    """Softmax temperature (nats of step entropy) with ``selection: soft``; small values approach ``max``."""
    start_step: int = 0
    """No echo term before this training step (steps count from 1; 0 or 1: from the first step)."""
    coef_schedule: str = "constant"
    """lambda over training: ``constant``; ``linear`` (warm-up from ``coef / coef_warmup_steps`` to ``coef`` over
    ``coef_warmup_steps`` steps from ``start_step``); ``adaptive`` (``coef`` x the step's fraction of all-correct
    groups)."""
    coef_warmup_steps: int = 0
    """Length of the ``linear`` warm-up, in training steps."""
    success_key: str = "accuracy"
    """Per-sample score from the reward function that says "verified correct" (never ``overall``)."""
    success_threshold: float = 1.0
    """A rollout is verified when ``score[success_key] >= success_threshold``."""
    entropy_chunk_size: int = 128
    """Rows of logits upcast to fp32 at a time when computing token entropy."""
    trace_freq: int = 0
    """Write trace files every N training steps (0: never)."""
    trace_groups: int = 4
    """Groups written per traced step (mined groups first)."""
    trace_dir: Optional[str] = None  # noqa: UP045 (OmegaConf structured configs need typing.Optional)
    """Folder of the trace files; the trainer picks a default under its checkpoint folder when unset."""

    @property
    def active(self) -> bool:
        """Whether the echo term is computed at all."""
        return bool(self.enable) and self.coef > 0

    @property
    def weighted(self) -> bool:
        """Whether clips carry weights (several per group): ``top_k`` or ``soft`` selection."""
        return self.selection != "max"

    def mining_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`echovl.clip.mine_echo_clips` these settings give."""
        return {
            "min_step_tokens": self.min_step_tokens,
            "scope": self.scope,
            "selection": self.selection,
            "top_k": self.top_k,
            "soft_temperature": self.soft_temperature,
        }

    def coef_at(self, step: int, degenerate_fraction: float | None = None) -> float:
        """lambda on training ``step`` (:func:`echovl.schedule.echo_coef`); 0 when echo is off."""
        if not self.active:
            return 0.0
        return echo_coef(
            self.coef,
            step,
            start_step=self.start_step,
            schedule=self.coef_schedule,
            warmup_steps=self.coef_warmup_steps,
            degenerate_fraction=degenerate_fraction,
        )

    def validate(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"echo.{key} {why}, got {getattr(self, key)!r}")

        if not isinstance(self.enable, bool):
            raise bad("enable", "must be true or false")
        if isinstance(self.coef, bool) or not isinstance(self.coef, (int, float)):
            raise bad("coef", "must be a number")
        if not math.isfinite(self.coef) or self.coef < 0:
            raise bad("coef", "must be a finite number >= 0")
        if isinstance(self.delimiters, str):
            raise bad("delimiters", "must be a list of strings, e.g. ['\\n']")
        # a shell or single-quoted YAML passes a backslash and an "n": nobody means that (it would split "\\neq")
        self.delimiters = [unescape(d) if isinstance(d, str) else d for d in self.delimiters]
        if not self.delimiters or any(not isinstance(d, str) or not d for d in self.delimiters):
            raise bad("delimiters", "must be a non-empty list of non-empty strings")
        if any("\ufffd" in d for d in self.delimiters):
            raise bad(
                "delimiters", "may not contain U+FFFD (the replacement character a partial UTF-8 token decodes to)"
            )
        for key in ("min_step_tokens", "entropy_chunk_size", "trace_groups", "top_k"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(key, "must be an integer >= 1")
        if isinstance(self.trace_freq, bool) or not isinstance(self.trace_freq, int) or self.trace_freq < 0:
            raise bad("trace_freq", "must be an integer >= 0 (0 disables traces)")
        if self.scope not in SCOPES:
            raise bad("scope", f"must be one of {', '.join(SCOPES)}")
        if self.selection not in SELECTIONS:
            raise bad("selection", f"must be one of {', '.join(SELECTIONS)}")
        if self.coef_schedule not in COEF_SCHEDULES:
            raise bad("coef_schedule", f"must be one of {', '.join(COEF_SCHEDULES)}")
        for key in ("start_step", "coef_warmup_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(key, "must be an integer >= 0")
        if isinstance(self.soft_temperature, bool) or not isinstance(self.soft_temperature, (int, float)):
            raise bad("soft_temperature", "must be a number")
        if not (math.isfinite(self.soft_temperature) and self.soft_temperature > 0):
            raise bad("soft_temperature", "must be a finite number > 0")
        if self.coef_schedule == "linear" and self.coef_warmup_steps < 1:
            raise bad("coef_warmup_steps", "must be >= 1 with coef_schedule: linear")
        if not isinstance(self.success_key, str) or not self.success_key:
            raise bad("success_key", "must be the name of a per-sample reward score, e.g. 'accuracy'")
        if self.success_key == "overall":
            raise bad("success_key", "must not be 'overall', which mixes in the format score; use 'accuracy'")
        if isinstance(self.success_threshold, bool) or not isinstance(self.success_threshold, (int, float)):
            raise bad("success_threshold", "must be a number")
        if not math.isfinite(self.success_threshold):
            raise bad("success_threshold", "must be finite")
        if self.trace_dir is not None and not isinstance(self.trace_dir, str):
            raise bad("trace_dir", "must be a folder path")


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
