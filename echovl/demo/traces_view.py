"""The traces tab's data: a trace folder written by training (or by ``demo/make_example_traces.py``), browsed
by training step and group. Reading goes through :mod:`echovl.traces`; nothing here imports gradio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..traces import TraceError, list_trace_files, read_trace_file
from .live import DemoError, open_image

__all__ = ["TraceStep", "group_choices", "group_label", "load_group_image", "load_step", "open_trace_folder"]


@dataclass
class TraceStep:
    """The groups of one traced training step. ``error`` names the first unreadable line, if any: the groups
    before it are kept, the rest of the file is not read."""

    train_step: int
    path: Path
    records: list[dict]
    error: str | None = None


def open_trace_folder(folder: str | Path) -> list[tuple[int, Path]]:
    """``(train_step, file)`` of every trace file in ``folder``; a clear :class:`TraceError` if there is none."""
    text = str(folder or "").strip()
    if not text:
        raise TraceError("no trace folder given")
    folder = Path(text).expanduser()
    files = list_trace_files(folder)
    if not files:
        raise TraceError(f"{folder}: no trace files (step_XXXXXX.jsonl) in this folder")
    return files


def load_step(files: list[tuple[int, Path]], train_step: int) -> TraceStep:
    """Read the trace file of ``train_step`` (one of ``files``), keeping what precedes a bad line."""
    paths = dict(files)
    if train_step not in paths:
        raise TraceError(f"no trace file for training step {train_step}")
    path = paths[train_step]
    records, error = [], None
    try:
        for record in read_trace_file(path):
            records.append(record)
    except TraceError as problem:
        error = str(problem)
    except (OSError, UnicodeDecodeError) as problem:
        error = f"{path}: cannot read the file ({problem})"
    if not records and error is None:
        error = f"{path}: the file has no groups"
    return TraceStep(train_step=train_step, path=path, records=records, error=error)


def group_label(index: int, record: dict) -> str:
    """Dropdown label of a group: its id, outcome and clip."""
    rollouts = record.get("rollouts") or []
    verified = sum(bool(r.get("verified")) for r in rollouts if isinstance(r, dict))
    total = len(rollouts)
    outcome = "degenerate" if total and verified == total else "all wrong" if verified == 0 else "mixed"
    clip = record.get("clip")
    clip_text = f"clip: rollout {clip.get('rollout')} step {clip.get('step')}" if isinstance(clip, dict) else "no clip"
    return f"#{index} · group {record.get('group')} · {outcome} ({verified}/{total}) · {clip_text}"


def group_choices(step: TraceStep) -> list[tuple[str, int]]:
    """``(label, index)`` per group of a step, for a dropdown."""
    return [(group_label(i, record), i) for i, record in enumerate(step.records)]


def load_group_image(folder: str | Path, record: dict):
    """The group's problem image (PIL) and a note when it cannot be shown; ``(None, None)`` without image."""
    name = record.get("image")
    if not name:
        return None, None
    folder = Path(folder).expanduser().resolve()
    path = (folder / str(name)).resolve()
    if not path.is_relative_to(folder):
        return None, f"image {name} is outside the trace folder: not shown"
    try:
        return open_image(path), None
    except DemoError as error:
        return None, str(error)
