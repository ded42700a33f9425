"""The commands' settings layer: each option declared once, as a dataclass field, and the command line parsed from
the fields (:class:`transformers.HfArgumentParser`); the commands' error lines and exit statuses; their progress bars.

A command's options are the fields of its settings dataclasses. ``HfArgumentParser`` makes each field an option:
``--field-name`` (and ``--field_name``), its type (``int``, ``float``, ``str``, ``Path``, ``X | None``,
``Literal[...]``: the choices, ``list[X]``: one or more values, ``bool``: a flag), its default (``required`` without
one) and its help. The field's metadata (:func:`option`) comes on top and wins over what the type gives:

- ``help`` and any ``argparse`` keyword (``action``, ``type``, ``nargs``, ``metavar``, ``choices``); an ``action``
  replaces the ``type`` and ``nargs`` the field's type would give (``action="append"``: ``--model A --model B``;
  ``argparse.BooleanOptionalAction``: ``--progress`` / ``--no-progress``);
- ``flags``: the option strings instead of the field's name (``["--model"]``; ``["folders"]``: a positional);
- ``group``: the section of ``--help`` it is listed in;
- ``option=False``: not on the command line (set by another option's action, or only from Python);
- ``settings_file="the training config"``: the option names a YAML file whose values become the defaults of the
  fields that give their key in it (``config_key="data.format_prompt"``): a flag beats the file, the file beats the
  field's default. Its help lists the keys it reads; an unreadable file is a :class:`SettingsFileError`.

A field's checks are its dataclass's ``__post_init__``: a value that no option may take raises :class:`OptionError`
(the command prints its usage and the message, exit status 2, like argparse for a malformed value), a bad input
the command's own error (one line on stderr, exit status 1: :func:`run_command`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "OptionError",
    "SettingsFileError",
    "command_parser",
    "option",
    "parse_settings",
    "progress_bar",
    "progress_option",
    "run_command",
]

_OURS = ("flags", "group", "option", "settings_file", "config_key")
"""Metadata keys of this module (the others go to ``argparse``)."""


class OptionError(ValueError):
    """Options that do not go together, or a value no option may take: the usage and this message, exit status 2."""


class SettingsFileError(ValueError):
    """A settings file (``settings_file``) that cannot be read: one line on stderr, exit status 1."""


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory=dataclasses.MISSING, **metadata):
    """A dataclass field that is a command-line option: its ``help`` and further metadata (module docstring)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help, **metadata})


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option under its hyphenated spellings only, and ``(default: X)`` after its help unless the help speaks of
    its default itself or it has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, []) or action.required:
            return text
        return super()._get_help_string(action)

    def _format_action_invocation(self, action):
        names = action.option_strings
        shown = [n for n in names if not ("_" in n and n.replace("_", "-") in names)]
        if shown != names:
            action = copy.copy(action)
            action.option_strings = shown
        return super()._format_action_invocation(action)


class _FieldOption:
    """Stands for the parser while ``HfArgumentParser`` adds a field's option, and adds it with the field's metadata
    on top of what ``HfArgumentParser`` derived from the field's type (module docstring)."""

    def __init__(self, target, field: dataclasses.Field):
        self.target = target
        self.field = field

    def add_argument(self, *names: str, **derived) -> None:
        metadata = dict(self.field.metadata)
        if "action" in metadata:
            for key in ("type", "nargs", "const"):
                derived.pop(key, None)
        kwargs = {k: v for k, v in {**derived, **metadata}.items() if k not in (*_OURS, "aliases")}
        if kwargs.get("nargs") == "?" and kwargs.get("const") is True:  # a bool field: --flag, or --flag false
            kwargs.setdefault("metavar", "{true,false}")
        names = metadata.get("flags") or sorted(names, key=lambda name: "_" in name)  # the hyphenated spelling first
        if names[0].startswith("-"):
            kwargs["dest"] = self.field.name
        else:  # a positional
            kwargs.pop("required", None)
        self.target.add_argument(*names, **kwargs)


def command_parser(*settings: type, prog: str, description: str) -> argparse.ArgumentParser:
    """The ``HfArgumentParser`` of a command whose options are the fields of the ``settings`` dataclasses (module
    docstring): the required options first, then the others in the order of their fields, by ``group``."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser([], prog=prog, description=description, formatter_class=_HelpFormatter)
    parser.dataclass_types = list(settings)
    groups: dict[str, Any] = {}
    hints = {dtype: typing.get_type_hints(dtype) for dtype in settings}
    fields = [(dtype, f) for dtype in settings for f in dataclasses.fields(dtype) if f.init]
    reads = [f.metadata["config_key"] for _, f in fields if "config_key" in f.metadata]
    for dtype, field in sorted(fields, key=lambda item: not _required(item[1])):
        if field.metadata.get("option", True) is False:
            default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
            parser.set_defaults(**{field.name: default})  # HfArgumentParser expects every field in the namespace
            continue
        field = copy.copy(field)  # HfArgumentParser rewrites its type
        field.type = hints[dtype][field.name]
        if "settings_file" in field.metadata:
            field.metadata = {**field.metadata, "help": f"{field.metadata['help']} (reads {', '.join(reads)})"}
        title = field.metadata.get("group")
        if title is not None and title not in groups:
            groups[title] = parser.add_argument_group(title)
        HfArgumentParser._parse_dataclass_field(_FieldOption(groups.get(title, parser), field), field)
    return parser


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def parse_settings(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> tuple:
    """The settings dataclasses of the command line ``argv`` (default: ``sys.argv[1:]``), in the parser's order.

    A settings file on the command line gives the defaults of the fields that name their key in it; an
    :class:`OptionError` of a dataclass's checks, or an unknown argument, is argparse's usage error (exit status 2).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    defaults = {}
    for field in (f for dtype in parser.dataclass_types for f in dataclasses.fields(dtype)):
        if "settings_file" in field.metadata:
            defaults.update(_settings_file_defaults(parser, field, argv))
    saved = {dest: parser.get_default(dest) for dest in defaults}
    parser.set_defaults(**defaults)
    try:
        *settings, unknown = parser.parse_args_into_dataclasses(
            argv, return_remaining_strings=True, look_for_args_file=False
        )
    except OptionError as exc:
        parser.error(str(exc))
    finally:
        parser.set_defaults(**saved)  # the next command line of this parser may name another file, or none
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(settings)


def _settings_file_defaults(parser: argparse.ArgumentParser, field: dataclasses.Field, argv: list[str]) -> dict:
    """The defaults the settings file of ``field`` on the command line gives (none without one)."""
    import yaml

    find = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    find.add_argument(*(field.metadata.get("flags") or [f"--{field.name.replace('_', '-')}"]), dest="path")
    try:
        path = find.parse_known_args(argv)[0].path
    except argparse.ArgumentError:  # no value: the command's parser says so
        return {}
    if not path:
        return {}
    what = field.metadata["settings_file"]
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping, got {type(data).__name__}")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SettingsFileError(f"cannot read {what} {path}: {exc}") from exc
    defaults = {}
    for f in (f for dtype in parser.dataclass_types for f in dataclasses.fields(dtype) if "config_key" in f.metadata):
        *parents, key = f.metadata["config_key"].split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node:
            defaults[f.name] = node[key]
    return defaults


def run_command(
    parser: argparse.ArgumentParser,
    run: Callable[..., int | None],
    argv: Sequence[str] | None = None,
    *,
    errors: tuple[type[Exception], ...] = (),
    prefix: str = "error: ",
    interrupted: str | None = None,
) -> int:
    """Parse ``argv`` (:func:`parse_settings`) and call ``run(*settings)``; the exit status is ``run``'s (0 for None).

    A bad input is one line on stderr, ``prefix`` and the message, and exit status 1: an exception of ``errors`` (the
    command's own) or an unreadable settings file. ``interrupted``: the line for Ctrl-C (exit status 130); without it
    the interrupt goes on.
    """
    try:
        status = run(*parse_settings(parser, argv))
    except (SettingsFileError, *errors) as exc:
        print(f"{prefix}{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return 130
    return status or 0


def progress_option():
    """The ``--progress`` / ``--no-progress`` option of a command's settings (a ``show_progress`` field)."""
    return option(
        None,
        flags=["--progress"],
        action=argparse.BooleanOptionalAction,
        help="progress bars (default: when stderr is a terminal)",
    )


def progress_bar(
    iterable=None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    enable: bool | None = None,
    leave: bool = False,
):
    """A tqdm progress bar on stderr, shown when ``enable`` (None: when stderr is a terminal); it goes away when done
    unless ``leave``."""
    from tqdm import tqdm

    disable = None if enable is None else not enable
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, dynamic_ncols=True)
