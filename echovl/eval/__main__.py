"""``python -m echovl.eval --model A [--model B ...] --benchmarks FILES_OR_FOLDERS --out DIR [options]``.

The options are :class:`echovl.eval.EvalConfig`'s fields (:mod:`echovl.cli`); see ``--help`` and docs/evaluation.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..cli import command_parser, run_command
from ..inference import InferenceError
from .run import EvalConfig, evaluate
from .settings import TrainingConfigFile

__all__ = ["build_parser", "main"]


def build_parser():
    return command_parser(
        EvalConfig,
        TrainingConfigFile,
        prog="python -m echovl.eval",
        description=(
            "Evaluate models on benchmark files and print the paper's table: one row per model, one column per "
            "benchmark, the in-distribution (ID) and out-of-distribution (OOD) averages, and each model's "
            "difference to the first with a paired bootstrap interval over problems. Prompts are built as EasyR1 "
            "builds them in training; answers are graded by echovl's training reward. Writes OUT/<model>/"
            "samples.jsonl, OUT/results.json, results.csv and table.md (the resume cache: OUT/.cache). A killed run "
            "continues where it stopped when started again with the same arguments."
        ),
    )


def _evaluate(config: EvalConfig, _: TrainingConfigFile) -> int:
    try:
        evaluate(config)
    except KeyboardInterrupt:
        print(
            f"interrupted: the samples generated so far are kept in {config.out}/.cache; run the same command again "
            "to continue",
            file=sys.stderr,
        )
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), _evaluate, argv, errors=(InferenceError,))  # EvalError is one


if __name__ == "__main__":
    raise SystemExit(main())
