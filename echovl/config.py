"""EchoConfig: the ``echo:`` section of a training config."""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from .clip import SCOPES, SELECTIONS
from .schedule import COEF_SCHEDULES, echo_coef

__all__ = ["ConfigSection", "EchoConfig", "reject_unknown_keys"]


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


def _unescape(text: str) -> str:
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
        self.delimiters = [_unescape(d) if isinstance(d, str) else d for d in self.delimiters]
        if not self.delimiters or any(not isinstance(d, str) or not d for d in self.delimiters):
            raise bad("delimiters", "must be a non-empty list of non-empty strings")
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
