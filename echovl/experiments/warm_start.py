"""The CPU mini-experiment's warm start as a model folder, and its held-out problems as a parquet file, for the
analyses (``python -m echovl.analysis.entropy_gap`` / ``step_deletion``) on a model that solves part of a task.

``python -m echovl.experiments.warm_start --out runs/tiny_warm_start`` writes

- ``model/``: the tiny Qwen2.5-VL of :mod:`echovl.experiments.tiny_cpu` after the same supervised warm-up from the
  same seed, threads and deterministic algorithms (:func:`~echovl.experiments.tiny_cpu.warm_up`, the model
  ``tiny_cpu`` saves as ``work/model_warmup``), with its processor, so that it loads like any model folder;
- ``problems.parquet``: the experiment's held-out problems (``problem`` = ``<image>`` + the question, ``answer``,
  ``solution`` = the reference solution the warm-up trains on, ``images``).

The experiment's prompt is the bare question after the picture, and a picture is 28 x 28 pixels (one image token),
so the analyses run with ``--format-prompt none --min-pixels 784 --max-pixels 3136`` (docs/analysis.md).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cli import OptionError, command_parser, option, run_command
from ..outputs import Outputs

__all__ = ["WarmStartOptions", "main", "problems_table", "write_warm_start"]


def problems_table(problems):
    """The problems as a parquet-ready table: problem, answer, solution, images."""
    import pyarrow as pa

    from .digits import QUESTION, digit_image, solution

    rows = []
    for p in problems:
        buffer = io.BytesIO()
        digit_image(p).save(buffer, format="PNG")
        rows.append(
            {
                "problem": f"<image>{QUESTION}",
                "answer": p.answer,
                "solution": solution(p),
                "images": [{"bytes": buffer.getvalue(), "path": None}],
            }
        )
    return pa.Table.from_pylist(rows)


def write_warm_start(out: str | Path, settings=None, *, problems: int = 100, progress=None) -> dict:
    """Write ``out/model`` and ``out/problems.parquet`` (module docstring); returns the warm-up's summary."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .digits import make_problems
    from .tiny_cpu import ExperimentSettings, _Reproducible, build_model, stage_progress, warm_up

    progress = progress or stage_progress
    settings = settings or ExperimentSettings()
    out = Path(out)
    with Outputs() as outputs:  # both or neither, replacing an earlier run's
        base = build_model(outputs.folder(out / "model"), settings)
        processor = AutoProcessor.from_pretrained(base, padding_side="left")
        train = make_problems(settings.train_problems, seed=settings.seed)  # as run_experiment draws them
        probe = make_problems(settings.probe_problems, seed=settings.seed + 1)
        held_out = make_problems(max(problems, settings.eval_problems), seed=settings.seed + 2)[:problems]
        with _Reproducible(settings.threads):  # as run_experiment: fixed threads, deterministic algorithms
            torch.manual_seed(settings.seed)
            model = AutoModelForImageTextToText.from_pretrained(base)
            summary = warm_up(model, processor, train, probe, settings, progress)
        model.save_pretrained(base, safe_serialization=True)  # over the random weights; tokenizer files stay
        pq.write_table(problems_table(held_out), outputs.open(out / "problems.parquet"))
    return summary


@dataclass
class WarmStartOptions:
    """``python -m echovl.experiments.warm_start``'s options."""

    out: str = option("runs/tiny_warm_start", help="output folder")
    seed: int = option(0, help="the experiment's seed")
    problems: int = option(100, help="held-out problems")
    threads: int | None = option(None, help="torch CPU threads (default: the experiment's, 2)")

    def __post_init__(self) -> None:
        if self.problems < 1:
            raise OptionError("--problems must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise OptionError("--threads must be >= 1")


def _write(options: WarmStartOptions) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .tiny_cpu import ExperimentSettings

    settings = ExperimentSettings(seed=options.seed)
    if options.threads is not None:
        settings.threads = options.threads
    summary = write_warm_start(options.out, settings, problems=options.problems)
    print(
        f"warm-up: {summary['steps']} supervised steps, probe accuracy {summary['probe_accuracy']:.2f}\n"
        f"model:    {Path(options.out) / 'model'}\nproblems: {Path(options.out) / 'problems.parquet'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(
        WarmStartOptions,
        prog="python -m echovl.experiments.warm_start",
        description="Write the CPU mini-experiment's warm-started tiny Qwen2.5-VL (OUT/model) and its held-out digit "
        "problems with reference solutions (OUT/problems.parquet), for the analyses.",
    )
    return run_command(parser, _write, argv)


if __name__ == "__main__":
    sys.exit(main())
