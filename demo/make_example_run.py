"""Write the shipped example run folder (``demo/example_run``) from a real run of the CPU mini-experiment.

    python demo/make_example_run.py [--out demo/example_run] [--from runs/tiny_cpu_echo]
                                    [--trace-steps 3] [--groups 4] [-- EXPERIMENT OPTIONS]

Without ``--from`` it runs ``python -m echovl.experiments.tiny_cpu`` (the tiny Qwen2.5-VL, baseline and echo;
options after ``--`` go to it, e.g. ``-- --seed 1 --threads 2``) in a temporary folder. It keeps the whole
``metrics.csv`` and ``summary.json`` (without its absolute file paths) and, to stay small, ``--trace-steps``
traced steps of the echo run (evenly spread, the first and the last included) with ``--groups`` groups each
(up to half of them degenerate, the rest in the trace file's order, which lists mined groups first) and the
images they use. The overview tab opens the result by default.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if (REPO / "echovl").is_dir():
    sys.path.insert(0, str(REPO))

from echovl.cli import OptionError, command_parser, option, parse_settings  # noqa: E402
from echovl.outputs import Outputs  # noqa: E402
from echovl.traces import TraceWriter, list_trace_files, read_trace_file  # noqa: E402


def spread(items: list, count: int) -> list:
    """``count`` items evenly spread over ``items``, the first and the last included."""
    if count >= len(items):
        return list(items)
    if count == 1:
        return [items[-1]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def pick_groups(records: list[dict], count: int) -> list[dict]:
    """Up to ``count`` records: degenerate groups first (at most half), then the others, in file order."""
    degenerate = [r for r in records if r.get("degenerate")][: count // 2]
    others = [r for r in records if r not in degenerate]
    picked = degenerate + others[: count - len(degenerate)]
    return sorted(picked, key=records.index)


def copy_example(source: Path, out: Path, trace_steps: int, groups: int) -> None:
    """Copy ``source`` (an experiment's output folder) into ``out``, trimmed; ``out`` is replaced at the end."""
    with Outputs() as outputs:  # written next to ``out`` and moved in place at the end: no half-written folder
        tmp = outputs.folder(out)
        shutil.copyfile(source / "metrics.csv", tmp / "metrics.csv")
        summary = json.loads((source / "summary.json").read_text())
        summary.pop("files", None)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        traces = source / "traces"
        files = list_trace_files(traces) if traces.is_dir() else []
        writer = TraceWriter(tmp / "traces")
        for step, path in spread(files, trace_steps):
            records = []
            for record in pick_groups(list(read_trace_file(path)), groups):
                image = traces / record["image"] if record.get("image") else None
                records.append(({**record, "image": None}, image))
            writer.write(step, records)
            print(f"step {step}: {len(records)} groups")


@dataclass
class ExampleRunOptions:
    out: Path = option(Path(__file__).resolve().parent / "example_run", help="the example run folder to write")
    source: Path | None = option(
        None, flags=["--from"], help="an existing experiment output (default: run the experiment now)"
    )
    trace_steps: int = option(3, help="traced steps kept")
    groups: int = option(4, help="groups kept per traced step")

    def __post_init__(self) -> None:
        if self.trace_steps < 1 or self.groups < 1:
            raise OptionError("--trace-steps and --groups must be >= 1")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = command_parser(
        ExampleRunOptions, prog="python demo/make_example_run.py", description=__doc__.split("\n\n")[0]
    )
    (args,) = parse_settings(parser, argv)
    if args.source is not None:
        copy_example(args.source, args.out.resolve(), args.trace_steps, args.groups)
    else:
        with tempfile.TemporaryDirectory(prefix="echovl-example-run-") as work:
            command = [sys.executable, "-m", "echovl.experiments.tiny_cpu", "--out", work, *extra]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
            subprocess.run(command, check=True, cwd=REPO, env=env)
            copy_example(Path(work), args.out.resolve(), args.trace_steps, args.groups)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
