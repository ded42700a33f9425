"""How long are the steps EchoRL picks? ``python -m echovl.analysis.clip_steps TRACE_DIR [TRACE_DIR ...]``.

The paper averages entropy over a step so that one noisy token does not decide the clip, yet a one-token step
(a ``<think>`` line, a lone ``$$``) can still win. This reads trace folders (:mod:`echovl.traces`) and reports,
per folder:

- how many clips were chosen, and how often the chosen step has fewer than 2, 3, 5 text tokens;
- for each ``echo.min_step_tokens`` = k, how many groups would get another clip (or none) than with k = 1: both
  re-mined from the trace's own per-step entropies and text-token counts (verified rollouts only, never a LUFFY
  expert row; ties to the lowest rollout, then the earliest step, as :func:`echovl.clip.mine_echo_clips`). Both
  sides use the trace's entropies, rounded to 6 decimals, so a tie the rounding made cannot count as a change.

``--csv FILE`` writes the same table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import OptionError, command_parser, option, run_command
from ..outputs import csv_text, write_files
from ..traces import TraceError, list_trace_files, read_trace_file

__all__ = ["ClipStepStats", "ClipStepsSettings", "clip_step_stats", "main", "remine_step"]

DEFAULT_THRESHOLDS = (2, 3, 5)


def remine_step(record: dict, min_step_tokens: int) -> tuple[int, int] | None:
    """``(rollout, step)`` of the clip a trace record's group gets with ``min_step_tokens``, or None."""
    best = None
    for r, rollout in enumerate(record["rollouts"]):
        if not rollout.get("verified") or rollout.get("expert"):  # a LUFFY expert row never gives the clip
            continue
        for s, step in enumerate(rollout["steps"]):
            if step["entropy"] is None or step["text_tokens"] < min_step_tokens:
                continue
            if best is None or step["entropy"] > best[0]:
                best = (step["entropy"], r, s)
    return None if best is None else best[1:]


@dataclass
class ClipStepStats:
    """Counts over the clips of one trace folder."""

    folder: str
    clips: int = 0
    shorter_than: dict[int, int] = field(default_factory=dict)
    changed_with_min: dict[int, int] = field(default_factory=dict)

    def row(self) -> dict:
        out = {"folder": self.folder, "clips": self.clips}
        for k, n in sorted(self.shorter_than.items()):
            out[f"step_tokens_lt_{k}"] = n
        for k, n in sorted(self.changed_with_min.items()):
            out[f"changed_min_{k}"] = n
        return out


def clip_step_stats(folder: str | Path, thresholds: Sequence[int] = DEFAULT_THRESHOLDS) -> ClipStepStats:
    """Statistics of the clip steps in one trace folder (see the module docstring)."""
    stats = ClipStepStats(str(folder), 0, {k: 0 for k in thresholds}, {k: 0 for k in thresholds})
    files = list_trace_files(folder)
    if not files:
        raise TraceError(f"{folder}: no trace files (step_*.jsonl)")
    for _, path in files:
        for number, record in enumerate(read_trace_file(path), start=1):
            try:
                _count(stats, record, thresholds)
            except (KeyError, IndexError, TypeError) as error:
                raise TraceError(
                    f"{path}: record {number} (group {record.get('group')}): malformed clip or steps "
                    f"({type(error).__name__}: {error})"
                ) from None
    return stats


def _count(stats: ClipStepStats, record: dict, thresholds: Sequence[int]) -> None:
    for clip in record.get("clips") or ([record["clip"]] if record["clip"] else []):
        tokens = record["rollouts"][clip["rollout"]]["steps"][clip["step"]]["text_tokens"]
        stats.clips += 1
        for k in thresholds:
            stats.shorter_than[k] += tokens < k
    if record["clip"] is not None:
        chosen = remine_step(record, 1)
        for k in thresholds:
            stats.changed_with_min[k] += remine_step(record, k) != chosen


def _format(stats: Iterable[ClipStepStats], thresholds: Sequence[int]) -> str:
    head = ["folder", "clips"] + [f"step < {k} tok" for k in thresholds] + [f"other clip, min {k}" for k in thresholds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stats:
        cells = [s.folder, str(s.clips)]
        for table in (s.shorter_than, s.changed_with_min):
            cells += [f"{table[k]} ({table[k] / max(s.clips, 1):.0%})" for k in thresholds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class ClipStepsSettings:
    """``python -m echovl.analysis.clip_steps``'s options."""

    folders: list[str] = option(flags=["folders"], metavar="TRACE_DIR", help="trace folders (step_*.jsonl)")
    thresholds: list[int] = option(
        default_factory=lambda: list(DEFAULT_THRESHOLDS), help="step lengths in text tokens to count clips below"
    )
    csv: Path | None = option(None, help="also write the table as CSV")

    def __post_init__(self) -> None:
        if any(k < 1 for k in self.thresholds):
            raise OptionError("--thresholds must be >= 1")


def _report(settings: ClipStepsSettings) -> None:
    stats = [clip_step_stats(folder, settings.thresholds) for folder in settings.folders]
    print(_format(stats, settings.thresholds))
    if settings.csv:
        write_files({settings.csv: csv_text([s.row() for s in stats])})
        print(f"wrote {settings.csv}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(
        ClipStepsSettings, prog="python -m echovl.analysis.clip_steps", description=__doc__.split("\n")[0]
    )
    return run_command(
        parser, _report, argv, errors=(TraceError, OSError, KeyError, IndexError), prefix="clip_steps: "
    )


if __name__ == "__main__":
    raise SystemExit(main())
