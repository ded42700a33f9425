"""The EasyR1 run config: EasyR1's ``PPOConfig`` plus the sections of :mod:`echovl.config`, loaded as EasyR1 loads it.

``python -m echovl.train config=FILE.yaml key=value ...``: the structured defaults, then the YAML file, then the
dotted overrides, in OmegaConf struct mode, so a misspelt key is an error (reported with the full key, the
closest valid name and where it came from) instead of a silently ignored setting.

The ``echo:`` and ``guidance:`` sections are copied into ``worker.actor.echo`` and ``worker.actor.guidance``
(automatic fields, like EasyR1 copies the KL settings into the actor) because the workers only receive
``config.worker``. Setting ``worker.actor.echo.<key>`` (or ``worker.actor.guidance.<key>``) to anything but
``echo.<key>``'s (``guidance.<key>``'s) value is an error naming both keys (the copy would overwrite it); values are
compared resolved, so an interpolation such as ``${echo.coef}`` is fine.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from verl.trainer.config import PPOConfig
from verl.workers.actor.config import ActorConfig
from verl.workers.config import WorkerConfig

from ..config import EchoConfig, GuidanceConfig
from .guidance import check_guidance, check_solution_column

__all__ = [
    "ConfigError",
    "EasyR1EchoConfig",
    "EchoActorConfig",
    "EchoPPOConfig",
    "EchoWorkerConfig",
    "check_paths",
    "load_config",
]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and where it came from."""


@dataclass
class EasyR1EchoConfig(EchoConfig):
    """:class:`~echovl.config.EchoConfig` plus what only the EasyR1 trainer needs."""

    keep_filtered_clips: int = -1
    """With DAPO's online filtering (``algorithm.online_filtering``): how many EchoClips to keep from the
    all-correct groups the filter drops (one per group). Each kept group costs a no-grad forward over its
    ``rollout.n`` rollouts (for their entropies), and its clip one extra row in the update (prompt + clip prefix,
    zero advantage, no policy-gradient/KL term), beyond DAPO's batch: no DAPO group is given up. ``-1``: all of
    them; ``0``: none (plain DAPO, echo only on the groups it keeps); ``N``: at most ``N``."""

    def validate(self) -> None:
        super().validate()
        value = self.keep_filtered_clips
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise ValueError(f"echo.keep_filtered_clips must be an integer >= -1, got {value!r}")


@dataclass
class EchoActorConfig(ActorConfig):
    # below are auto keys
    echo: EasyR1EchoConfig = field(default_factory=EasyR1EchoConfig, init=False)
    """Copied from the top-level ``echo:`` section."""
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig, init=False)
    """Copied from the top-level ``guidance:`` section."""


@dataclass
class EchoWorkerConfig(WorkerConfig):
    actor: EchoActorConfig = field(default_factory=EchoActorConfig)


@dataclass
class EchoPPOConfig(PPOConfig):
    worker: EchoWorkerConfig = field(default_factory=EchoWorkerConfig)
    echo: EasyR1EchoConfig = field(default_factory=EasyR1EchoConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)

    def post_init(self) -> None:
        super().post_init()
        self.worker.actor.echo = self.echo
        self.worker.actor.guidance = self.guidance
        check_guidance(self)
        if (
            self.algorithm.online_filtering
            and self.echo.active
            and self.echo.keep_filtered_clips != 0
            and self.algorithm.adv_estimator == "gae"
        ):  # the dropped groups' echo rows have no values for a critic to learn from
            raise ValueError(
                "echo.keep_filtered_clips keeps the clips of the all-correct groups DAPO's filter "
                "(algorithm.online_filtering) drops, which needs a critic-free algorithm.adv_estimator; with 'gae' "
                "set echo.keep_filtered_clips=0 (echo then mines only the groups DAPO keeps)"
            )


def _source_name(source: str) -> str:
    return "the command line" if source == "cli" else source


def _suggest(schema, full_key: str) -> str:
    parent, _, key = full_key.rpartition(".")
    section = OmegaConf.select(schema, parent) if parent else schema
    try:
        valid = [str(k) for k in section.keys()]
    except AttributeError:
        return ""
    close = difflib.get_close_matches(key, valid, n=1)
    where = f"'{parent}'" if parent else "the top level"
    hint = f" Did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
    return f"{hint} Valid keys under {where}: {', '.join(sorted(valid))}."


def _merge(schema, base, other, source: str):
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as error:
        full_key = error.full_key or str(error.key)
        raise ConfigError(
            f"unknown config key '{full_key}' in {_source_name(source)}.{_suggest(schema, full_key)}"
        ) from None
    except OmegaConfBaseException as error:
        full_key = getattr(error, "full_key", None) or "?"
        message = str(error).splitlines()[0]
        raise ConfigError(f"invalid value for '{full_key}' in {_source_name(source)}: {message}") from None


def _load_yaml(path: str):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml.YAMLError and friends
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(loaded, type(OmegaConf.create({}))):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data, worker, ..., echo)")
    return loaded


def load_config(args: Sequence[str] = (), *, check_files: bool = False) -> EchoPPOConfig:
    """Build the run config from ``config=FILE.yaml`` and ``dotted.key=value`` arguments, as EasyR1's ``main``.

    Args:
        args: command-line arguments (without the program name).
        check_files: check that the files the config names exist (see :func:`check_paths`) before EasyR1's
            ``post_init`` turns a missing one into ``None``.

    Raises:
        ConfigError: unknown key, invalid value, missing or malformed config file (or missing files).
    """
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"arguments are key=value pairs (e.g. config=configs/geo3k_grpo_echo.yaml), got {arg!r}")
    cli = OmegaConf.from_cli(list(args))
    schema = OmegaConf.structured(EchoPPOConfig())
    merged = schema
    sources = []
    config_path = cli.pop("config", None)
    if config_path is not None:
        sources.append((_load_yaml(str(config_path)), str(config_path)))
    sources.append((cli, "cli"))
    for source, name in sources:
        merged = _merge(schema, merged, source, name)
    _check_worker_copies(merged, sources)
    try:
        config: EchoPPOConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:  # e.g. an EchoConfig validation error, wrapped by OmegaConf
        cause = error.__cause__ or error
        raise ConfigError(str(cause).splitlines()[0]) from None
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if check_files:
        check_paths(config)
    try:
        config.deep_post_init()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return config


COPIED_SECTIONS = ("echo", "guidance")
"""Top-level sections that ``EchoPPOConfig.post_init`` copies into ``worker.actor``."""

_ABSENT = object()


def _raw(source, dotted: str):
    """The value at ``dotted`` in ``source`` as written (interpolations unresolved), or ``_ABSENT``."""
    node = OmegaConf.to_container(source, resolve=False)
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _resolved(merged, key: str):
    try:
        return OmegaConf.to_container(OmegaConf.select(merged, key, throw_on_missing=True), resolve=True)
    except OmegaConfBaseException as error:
        full_key = getattr(error, "full_key", None) or key
        message = str(error).splitlines()[0]
        raise ConfigError(f"cannot resolve '{full_key}': {message}") from None


def _check_worker_copies(merged, sources) -> None:
    """``worker.actor.echo`` and ``worker.actor.guidance`` are copies of the top-level ``echo:`` and ``guidance:``
    sections, made in ``post_init``: a value set there that differs from the section's would be overwritten without
    a word, so it is an error naming both keys. Values are compared resolved (``${echo.coef}`` is the same value);
    of several sources setting a key, the last one counts (as in the merge)."""
    for section in COPIED_SECTIONS:
        copy = f"worker.actor.{section}"
        given: dict[str, tuple[str, Any]] = {}  # key -> (source name, value as written), the last source's
        for source, name in sources:
            raw = _raw(source, copy)
            if raw is _ABSENT:
                continue
            if not isinstance(raw, dict):
                raise ConfigError(
                    f"{copy} in {_source_name(name)} must be a mapping like the {section}: section, got {raw!r}"
                )
            given.update({key: (name, value) for key, value in raw.items()})
        if not given:
            continue
        final, copied = _resolved(merged, section), _resolved(merged, copy)
        for key, (name, written) in given.items():
            if key in final and copied.get(key) != final[key]:
                value = copied.get(key)
                shown = f"{written} (= {value!r})" if isinstance(written, str) and "${" in written else repr(value)
                raise ConfigError(
                    f"{copy}.{key}={shown} in {_source_name(name)} conflicts with {section}.{key}={final[key]!r}: "
                    f"the workers get a copy of the top-level {section}: section, so set {section}.{key} "
                    f"(and leave {copy}.{key} unset)"
                )


_DATA_SUFFIXES = (".parquet", ".json", ".jsonl", ".csv", ".arrow")


def _missing(path: str | None) -> bool:
    return path is not None and not os.path.exists(path)


def check_paths(config: EchoPPOConfig) -> None:
    """Fail early, naming the key, when a file the run needs is missing. EasyR1 would only print a line and
    carry on without it (a missing format prompt silently trains without one).

    Relative paths are relative to the folder you launch from (the launch scripts run from the repository root).
    """
    where = f" (relative to {os.getcwd()})"
    files: dict[str, Any] = {
        "data.format_prompt": config.data.format_prompt,
        "data.override_chat_template": config.data.override_chat_template,
        "trainer.load_checkpoint_path": config.trainer.load_checkpoint_path,
    }
    reward = config.worker.reward.reward_function
    files["worker.reward.reward_function"] = reward.rsplit(":", 1)[0] if reward and ":" in reward else reward
    for key, path in files.items():
        if _missing(path):
            raise ConfigError(f"{key}: file not found: {path}{where}")
    try:
        check_solution_column(config)  # LUFFY / UFT: the expert solutions are in the training file
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config.worker.reward.reward_function is None:
        raise ConfigError("worker.reward.reward_function is not set (e.g. ./echovl/reward/math.py:compute_score)")
    for key in ("train_files", "val_files"):
        value = getattr(config.data, key)
        path = value.split("@", 1)[0] if value else value
        if path and (path.endswith(_DATA_SUFFIXES) or path.startswith((".", os.sep))) and _missing(path):
            raise ConfigError(
                f"data.{key}: no such file or folder: {path}{where}. Prepare the data first (docs/easyr1.md, "
                "'Prepare the data'), or point the path at your copy."
            )
