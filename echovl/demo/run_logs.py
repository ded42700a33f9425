"""The overview tab's data: the metric logs of training runs, per step, and the trace folder beside them.

Two log formats are read:

- EasyR1's ``experiment_log.jsonl`` (``trainer.logger`` includes ``file``; written to
  ``trainer.save_checkpoint_path``): one JSON object per ``log`` call, ``{"step": 12, "reward": {"accuracy": ...},
  "echo": {"loss": ...}, ...}``. EasyR1 nests the metric names at their ``/`` (``unflatten_dict``); they are
  flattened back here (``reward/accuracy``, ``echo/loss``). Lines of the same step (validation is logged on its
  own line before training and after the last step) are merged.
- The CPU mini-experiment's ``metrics.csv`` (:func:`echovl.experiments.tiny_cpu.metrics_csv`): one row per run
  and step, columns ``run``, ``step`` and one per metric (``accuracy``, ``all_correct_groups``, ``echo_loss``,
  ...); each value of ``run`` (``baseline``, ``echo``) becomes one run.

Metric names are kept as logged; :mod:`echovl.demo.overview` picks the ones it charts. A malformed line is skipped
and reported with its file and line number (an EasyR1 log read while training writes it may end in half a line);
a missing file, a folder with neither log, or a log without any step is a :class:`RunLogError`. Nothing here
imports gradio.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..traces import TraceError, list_trace_files

__all__ = [
    "CPU_LOG",
    "EASYR1_LOG",
    "RunFolder",
    "RunLog",
    "RunLogError",
    "find_trace_folder",
    "open_run_folder",
    "open_run_folders",
    "read_cpu_metrics",
    "read_easyr1_log",
]

EASYR1_LOG = "experiment_log.jsonl"
"""File name of EasyR1's file logger output."""
CPU_LOG = "metrics.csv"
"""File name of the CPU mini-experiment's metrics."""
TRACE_FOLDER_NAMES = ("echo_traces", "traces")
"""Trace folders looked for inside a run folder: EasyR1's and TRL's default, then the CPU experiment's."""


class RunLogError(ValueError):
    """A run folder or log that cannot be charted; the message names the file (and line) and what is wrong."""


@dataclass
class RunLog:
    """The metrics of one run: ``metrics[key][i]`` is the value at ``steps[i]`` (NaN: not logged that step)."""

    label: str
    steps: list[int]
    metrics: dict[str, list[float]]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """The steps where ``key`` has a finite value, and those values."""
        values = self.metrics.get(key, [])
        pairs = [(s, v) for s, v in zip(self.steps, values) if math.isfinite(v)]
        return [s for s, _ in pairs], [v for _, v in pairs]


@dataclass
class RunFolder:
    """One opened run folder: its log, the runs in it, its trace folder, and the lines that were skipped."""

    path: Path
    log: Path
    kind: str
    """``easyr1`` or ``cpu``."""
    runs: list[RunLog]
    traces: Path | None = None
    trace_steps: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """One message per skipped line or cell, naming file and line."""


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _flatten(data: dict, prefix: str = "") -> dict[str, float]:
    """``{"reward": {"accuracy": 1}}`` -> ``{"reward/accuracy": 1.0}``; values that are not numbers are left out."""
    flat = {}
    for key, value in data.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            number = _number(value)
            if number is not None:
                flat[name] = number
    return flat


def _read_text_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise RunLogError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RunLogError(f"{path}: cannot read the file ({error})") from None


def _table(label: str, by_step: dict[int, dict[str, float]]) -> RunLog:
    steps = sorted(by_step)
    keys = sorted({key for row in by_step.values() for key in row})
    metrics = {key: [by_step[s].get(key, math.nan) for s in steps] for key in keys}
    return RunLog(label=label, steps=steps, metrics=metrics)


def _no_steps(path: Path, problems: list[str]) -> RunLogError:
    detail = f" ({len(problems)} unreadable line(s); the first: {problems[0]})" if problems else ""
    return RunLogError(f"{path}: no training step logged{detail}")


def read_easyr1_log(path: str | Path, label: str | None = None) -> tuple[RunLog, list[str]]:
    """EasyR1's ``experiment_log.jsonl`` as one run, and a message per skipped line."""
    path = Path(path)
    by_step: dict[int, dict[str, float]] = {}
    problems = []
    for number, line in enumerate(_read_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{path}:{number}: not valid JSON ({error.msg}); line skipped")
            continue
        if not isinstance(record, dict):
            problems.append(f"{path}:{number}: a log line must be a JSON object; line skipped")
            continue
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            problems.append(f"{path}:{number}: no integer 'step' (got {step!r}); line skipped")
            continue
        by_step.setdefault(step, {}).update(_flatten({k: v for k, v in record.items() if k != "step"}))
    if not by_step:
        raise _no_steps(path, problems)
    return _table(label or path.parent.name or str(path), by_step), problems


def _float_cell(text: str) -> float | None:
    text = text.strip()
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def read_cpu_metrics(path: str | Path) -> tuple[list[RunLog], list[str]]:
    """The CPU experiment's ``metrics.csv``: one run per value of its ``run`` column (in order of appearance), and
    a message per skipped row or unreadable cell."""
    path = Path(path)
    lines = _read_text_lines(path)
    reader = csv.reader(lines)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise RunLogError(f"{path}: the file is empty (expected a header with 'run' and 'step')") from None
    except csv.Error as error:
        raise RunLogError(f"{path}:1: cannot parse the header ({error})") from None
    missing = [name for name in ("run", "step") if name not in header]
    if missing:
        raise RunLogError(f"{path}:1: the header has no column {' or '.join(repr(m) for m in missing)}")
    run_at, step_at = header.index("run"), header.index("step")
    metric_columns = [(i, name) for i, name in enumerate(header) if i not in (run_at, step_at) and name]
    runs: dict[str, dict[int, dict[str, float]]] = {}
    problems = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            problems.append(f"{path}:{reader.line_num}: cannot parse the row ({error}); row skipped")
            continue
        number = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            problems.append(f"{path}:{number}: {len(cells)} fields, the header has {len(header)}; row skipped")
            continue
        try:
            step = int(cells[step_at])
        except ValueError:
            problems.append(f"{path}:{number}: step {cells[step_at]!r} is not an integer; row skipped")
            continue
        row = {}
        for index, name in metric_columns:
            value = _float_cell(cells[index])
            if value is None:
                problems.append(f"{path}:{number}: column {name!r}: {cells[index]!r} is not a number; left out")
                value = math.nan
            row[name] = value
        runs.setdefault(cells[run_at].strip() or "(no run name)", {}).setdefault(step, {}).update(row)
    if not runs:
        raise _no_steps(path, problems)
    return [_table(label, by_step) for label, by_step in runs.items()], problems


def _configured_trace_dir(folder: Path) -> Path | None:
    """``echo.trace_dir`` of the EasyR1 config saved beside the log (``experiment_config.json``), if any."""
    try:
        config = json.loads((folder / "experiment_config.json").read_text(encoding="utf-8"))
        trace_dir = config["echo"]["trace_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(trace_dir, str) or not trace_dir:
        return None
    path = Path(trace_dir).expanduser()
    return path if path.is_absolute() else folder / path


def find_trace_folder(folder: str | Path) -> Path | None:
    """The trace folder of a run folder: ``echo.trace_dir`` of its saved EasyR1 config, else ``echo_traces/``
    or ``traces/`` inside it, else the folder itself if it holds trace files; None when there is none."""
    folder = Path(folder)
    configured = _configured_trace_dir(folder)
    candidates = ([configured] if configured else []) + [folder / name for name in TRACE_FOLDER_NAMES] + [folder]
    for candidate in candidates:
        try:
            if candidate.is_dir() and list_trace_files(candidate):
                return candidate
        except (OSError, TraceError):
            continue
    return None


def _locate_log(path: Path) -> tuple[Path, Path, str, list[str]]:
    """``(run folder, log file, kind, notes)`` for a run folder or a log file."""
    if path.is_file():
        if path.suffix == ".jsonl":
            return path.parent, path, "easyr1", []
        if path.suffix == ".csv":
            return path.parent, path, "cpu", []
        raise RunLogError(f"{path}: not a run log (expected EasyR1's {EASYR1_LOG} or the CPU experiment's {CPU_LOG})")
    if not path.is_dir():
        raise RunLogError(f"{path}: no such file or folder")
    easyr1, cpu = path / EASYR1_LOG, path / CPU_LOG
    if easyr1.is_file():
        notes = [f"{cpu}: not read (the folder also has {EASYR1_LOG}, which is shown)"] if cpu.is_file() else []
        return path, easyr1, "easyr1", notes
    if cpu.is_file():
        return path, cpu, "cpu", []
    raise RunLogError(
        f"{path}: no run log in this folder: neither {EASYR1_LOG} (EasyR1 with trainer.logger including 'file') "
        f"nor {CPU_LOG} (the CPU experiment)"
    )


def open_run_folder(path: str | Path, label: str | None = None) -> RunFolder:
    """Read a run folder (or a log file given directly) and find its traces. ``label`` names the folder's runs:
    an EasyR1 run is called ``label`` (default: the folder's name), a CPU-experiment run ``label · run``
    (default: the run's name)."""
    text = str(path or "").strip()
    if not text:
        raise RunLogError("no run folder given")
    folder, log, kind, problems = _locate_log(Path(text).expanduser())
    if kind == "easyr1":
        run, skipped = read_easyr1_log(log, label or folder.name or str(folder))
        runs = [run]
    else:
        runs, skipped = read_cpu_metrics(log)
        if label:
            for run in runs:
                run.label = f"{label} · {run.label}"
    traces = find_trace_folder(folder)
    trace_steps = [step for step, _ in list_trace_files(traces)] if traces else []
    return RunFolder(
        path=folder,
        log=log,
        kind=kind,
        runs=runs,
        traces=traces,
        trace_steps=trace_steps,
        problems=problems + skipped,
    )


def _folder_labels(paths: Sequence[Path]) -> list[str]:
    """Short distinct names: the folders' names, with their parents' when two are the same."""
    names = [p.name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = ["/".join(p.parts[-2:]) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{chr(ord('A') + i)}: {name}" for i, name in enumerate(names)]
    return names


def open_run_folders(paths: Sequence[str | Path]) -> list[RunFolder]:
    """Open one run folder, or several for an A/B (blank entries are ignored). With one folder, its runs keep
    their own names; with several, each run is prefixed by its folder's name."""
    given = [str(p).strip() for p in paths if str(p or "").strip()]
    if not given:
        raise RunLogError("no run folder given")
    if len(given) == 1:
        return [open_run_folder(given[0])]
    located = [Path(p).expanduser() for p in given]
    folders = [p.parent if p.is_file() else p for p in located]
    return [open_run_folder(p, label) for p, label in zip(located, _folder_labels(folders))]
