"""echovl.cli: the command line parsed from settings dataclasses (every documented spelling, bad values named), the
training config as defaults under the flags, the commands' error lines and exit statuses, the progress bars."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from echovl.cli import (
    OptionError,
    command_parser,
    option,
    parse_settings,
    progress_bar,
    progress_option,
    run_command,
)


def _set_pair(value: str) -> tuple[str, int]:
    name, _, number = value.partition("=")
    return name, int(number)


class _SetPair(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        namespace.pairs = {**namespace.pairs, value[0]: value[1]}


@dataclass
class Toy:
    models: list[str] = option(flags=["--model"], action="append", help="repeatable")
    files: list[str] = option(flags=["files"], help="positional, one or more")
    benchmarks: list[str] = option(default_factory=list, action="extend", nargs="+", help="several, repeatable")
    backend: Literal["auto", "vllm"] = option("auto", help="a choice")
    max_new_tokens: int = option(8192, help="an int")
    limit: int | None = option(None, help="an optional int")
    greedy: bool = option(False, help="a flag")
    out: Path = option(Path("runs/x"), help="a path", group="outputs")
    show_progress: bool | None = progress_option()
    pair: str | None = option(None, type=_set_pair, action=_SetPair, help="NAME=K into pairs")
    pairs: dict[str, int] = field(default_factory=dict, metadata={"option": False})
    prompt: str = option("plain", config_key="data.prompt", help="from the settings file")
    pixels: int = option(100, config_key="data.pixels", help="from the settings file")
    config: str | None = option(None, settings_file="the toy config", help="a settings file")

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise OptionError(f"--limit must be >= 1, got {self.limit}")


def toy(*argv: str) -> Toy:
    return parse_settings(command_parser(Toy, prog="toy", description="a toy command"), list(argv))[0]


def test_every_spelling_and_repeated_flags():
    parsed = toy("f1", "f2", "--model", "A", "--model", "B=c", "--benchmarks", "x", "y", "--benchmarks", "z")
    assert (parsed.models, parsed.files, parsed.benchmarks) == (["A", "B=c"], ["f1", "f2"], ["x", "y", "z"])
    assert (parsed.backend, parsed.max_new_tokens, parsed.limit, parsed.greedy) == ("auto", 8192, None, False)
    assert (parsed.out, parsed.show_progress, parsed.pairs) == (Path("runs/x"), None, {})
    both = [
        toy("f", "--model", "m", spelling, "7").max_new_tokens for spelling in ("--max-new-tokens", "--max_new_tokens")
    ]
    assert both == [7, 7]
    parsed = toy("f", "--model", "m", "--greedy", "--progress", "--limit", "3", "--out", "o", "--backend", "vllm")
    assert (parsed.greedy, parsed.show_progress, parsed.limit, parsed.out, parsed.backend) == (
        True,
        True,
        3,
        Path("o"),
        "vllm",
    )
    assert toy("f", "--model", "m", "--no-progress").show_progress is False
    assert toy("f", "--model", "m", "--greedy", "false").greedy is False
    assert toy("f", "--model", "m", "--pair", "a=1", "--pair", "b=2", "--pair", "a=3").pairs == {"a": 3, "b": 2}


@pytest.mark.parametrize(
    "argv, named",
    [
        (
            ["f", "--model", "m", "--max-new-tokens", "many"],
            "argument --max-new-tokens/--max_new_tokens: invalid int value: 'many'",
        ),
        (["f", "--model", "m", "--backend", "tpu"], "argument --backend: invalid choice: 'tpu'"),
        (["f", "--model", "m", "--greedy", "maybe"], "argument --greedy"),
        (["f"], "the following arguments are required: --model"),
        (["--model", "m"], "the following arguments are required: files"),
        (["f", "--model", "m", "--limit", "0"], "--limit must be >= 1, got 0"),  # the dataclass's check
        (["f", "--model", "m", "--lmit", "3"], "unrecognized arguments: --lmit 3"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        toy(*argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: toy") and f"toy: error: {named}" in err


def test_the_settings_file_gives_defaults_and_a_flag_beats_it(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("data:\n  prompt: fancy\n  pixels: 42\nother: 1\n")
    parsed = toy("f", "--model", "m", "--config", str(config))
    assert (parsed.prompt, parsed.pixels, parsed.config) == ("fancy", 42, str(config))
    assert toy("f", "--model", "m", "--config", str(config), "--pixels", "7").pixels == 7  # the flag wins
    assert toy("f", "--model", "m", "--pixels", "7", "--config", str(config)).pixels == 7  # in any order
    config.write_text("data:\n  pixels: 5\n")
    assert (toy("f", "--model", "m", "--config", str(config)).prompt) == "plain"  # a key it lacks: the default


def test_an_unreadable_settings_file_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list, not a mapping\n")
    parser = command_parser(Toy, prog="toy", description="a toy command")
    for path, why in ((bad, "expected a mapping, got list"), (tmp_path / "none.yaml", "No such file")):
        assert run_command(parser, lambda toy: 0, ["f", "--model", "m", "--config", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot read the toy config {path}: ") and why in err
        assert err.count("\n") == 1


def test_run_command_exit_statuses_and_error_lines(capsys):
    parser = command_parser(Toy, prog="toy", description="a toy command")
    argv = ["f", "--model", "m"]

    def fails(toy):
        raise ValueError("row 3 of f: empty answer")

    def interrupted(toy):
        raise KeyboardInterrupt

    assert run_command(parser, lambda toy: None, argv) == 0
    assert run_command(parser, lambda toy: 3, argv) == 3
    assert run_command(parser, fails, argv, errors=(ValueError,), prefix="toy: error: ") == 1
    assert capsys.readouterr().err == "toy: error: row 3 of f: empty answer\n"
    with pytest.raises(ValueError):  # not one of the command's errors: a bug, with its traceback
        run_command(parser, fails, argv)
    assert run_command(parser, interrupted, argv, interrupted="toy: interrupted; nothing was written") == 130
    assert capsys.readouterr().err == "toy: interrupted; nothing was written\n"
    with pytest.raises(KeyboardInterrupt):
        run_command(parser, interrupted, argv)


def test_help_lists_each_option_once_under_its_hyphenated_spelling_with_its_default(capsys):
    with pytest.raises(SystemExit):
        toy("--help")
    text = capsys.readouterr().out
    assert "--max-new-tokens MAX_NEW_TOKENS" in text and "--max_new_tokens" not in text
    assert "an int (default: 8192)" in text and "a choice (default: auto)" in text
    assert "--progress, --no-progress" in text and "(default: None)" not in text
    assert "outputs:\n  --out OUT" in text  # its group
    assert "--pairs" not in text  # not an option


def _command_parsers():
    from echovl.analysis.clip_steps import ClipStepsSettings
    from echovl.analysis.entropy_gap import EntropyGapConfig
    from echovl.analysis.step_deletion import StepDeletionConfig
    from echovl.data.geometry3k import Geometry3kSettings
    from echovl.data.openr1_math import OpenR1Settings
    from echovl.eval.__main__ import build_parser
    from echovl.eval.settings import TrainingConfigFile
    from echovl.experiments.tiny_cpu import ExperimentOptions
    from echovl.experiments.warm_start import WarmStartOptions

    parsers = {"eval": build_parser()}
    for name, settings in (
        ("entropy_gap", [EntropyGapConfig, TrainingConfigFile]),
        ("step_deletion", [StepDeletionConfig, TrainingConfigFile]),
        ("clip_steps", [ClipStepsSettings]),
        ("geometry3k", [Geometry3kSettings]),
        ("openr1_math", [OpenR1Settings]),
        ("tiny_cpu", [ExperimentOptions]),
        ("warm_start", [WarmStartOptions]),
    ):
        parsers[name] = command_parser(*settings, prog=name, description=name)
    return parsers


def test_every_option_of_every_command_has_help():
    for name, parser in _command_parsers().items():
        missing = [action.option_strings or action.dest for action in parser._actions if not action.help]
        assert not missing, f"{name}: options without help: {missing}"


def test_the_documented_command_lines_parse(tmp_path):
    parsers = _command_parsers()
    (config,) = parse_settings(parsers["tiny_cpu"], ["--quick", "--seeds", "0-2", "--variant", "soft:selection=soft"])
    assert (config.settings.steps, config.seed_list, config.settings.variants) == (
        2,
        [0, 1, 2],
        {"soft": {"selection": "soft"}},
    )
    (config,) = parse_settings(parsers["tiny_cpu"], ["--steps", "5", "--coef", "0.01", "--threads", "1"])
    assert (config.settings.steps, config.settings.coef, config.settings.threads) == (5, 0.01, 1)
    deletion, _ = parse_settings(
        parsers["step_deletion"],
        ["--model", "m", "--data", "d", "--out", "o", "--fractions", "0", "0.25", "--orders", "low", "high"],
    )
    assert (deletion.fractions, deletion.orders) == ([0.0, 0.25], ["high", "low"])
    (openr1,) = parse_settings(parsers["openr1_math"], ["--eval-source", "a", "b", "--dedup", "--strict"])
    assert (openr1.eval_source, openr1.dedup, openr1.strict, openr1.source) == (["a", "b"], True, True, None)
    (steps,) = parse_settings(parsers["clip_steps"], ["t1", "t2", "--thresholds", "2", "4", "--csv", "x.csv"])
    assert (steps.folders, steps.thresholds, steps.csv) == (["t1", "t2"], [2, 4], Path("x.csv"))


def test_analyses_read_the_delimiters_from_the_training_config(tmp_path):
    parser = _command_parsers()["entropy_gap"]
    config = tmp_path / "train.yaml"
    config.write_text("echo:\n  delimiters: ['\\n\\n']\ndata:\n  format_prompt: none\n")
    base = ["--model", "m", "--data", "d", "--out", "o", "--config", str(config)]
    parsed, _ = parse_settings(parser, base)
    assert (parsed.delimiters, parsed.format_prompt) == (["\n\n"], None)
    assert parse_settings(parser, [*base, "--delimiters", ";"])[0].delimiters == [";"]
    assert parse_settings(parser, base[:6])[0].delimiters == ["\n"]  # without a config: a newline


def test_progress_bar():
    assert list(progress_bar(range(3), enable=False)) == [0, 1, 2]
    assert progress_bar(total=2, enable=False).disable
    bar = progress_bar(total=2, desc="x", unit="rows", enable=True)
    bar.update(2)
    assert (bar.n, bar.total, bar.unit, bar.disable, bar.leave) == (2, 2, "rows", False, False)
    bar.close()
