"""The overview tab's views: charts of training runs over steps (one line per run, so an A/B shares each chart),
a summary of the opened folders, and the traced steps to open in the traces tab.

Charts are inline SVG drawn in :class:`echovl.demo.charts.LineChart` frames, as :func:`echovl.demo.render.render_chart`'s; their
data comes from :func:`build_charts`, which tests read without a browser. Each chart takes, per run, the first of
its metric names the run logs (EasyR1's name first, then the CPU experiment's column), and says which one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .charts import PALETTE, LineChart, axis_ticks, trailing_mean
from .render import esc
from .run_logs import RunFolder, RunLogError

__all__ = [
    "CHARTS",
    "CSS",
    "Chart",
    "ChartSpec",
    "OverviewView",
    "Series",
    "build_charts",
    "render_charts",
    "render_overview",
    "render_overview_chart",
    "render_run_summary",
    "trace_choices",
    "trace_target",
]


@dataclass(frozen=True)
class ChartSpec:
    """One chart: its metric under the names it is logged as, first match wins (per run)."""

    name: str
    title: str
    y_label: str
    keys: tuple[str, ...]
    about: str
    always: bool = False
    """Shown even when no run logs it (with a note); the other charts appear only when some run logs them."""
    smooth: bool = True
    """Smoothing applies (not to a schedule, nor to a metric logged every few steps)."""


CHARTS = (
    ChartSpec(
        "degenerate_groups",
        "Degenerate groups",
        "fraction of groups",
        ("echo/degenerate_groups", "all_correct_groups"),
        "groups whose rollouts are all verified correct: every GRPO advantage is 0 there",
        always=True,
    ),
    ChartSpec(
        "accuracy",
        "Rollout accuracy",
        "accuracy",
        ("reward/accuracy", "accuracy", "rewards/accuracy/mean", "critic/score/mean"),
        "mean accuracy of the step's rollouts",
        always=True,
    ),
    ChartSpec(
        "clip_step_entropy",
        "Clip step entropy",
        "nats",
        ("echo/clip_step_entropy", "clip_step_entropy"),
        "mean token entropy of the chosen steps, mean over the step's clips",
        always=True,
    ),
    ChartSpec(
        "clip_length",
        "Clip length",
        "tokens",
        ("echo/clip_length", "clip_length"),
        "tokens per EchoClip, mean over the step's clips",
        always=True,
    ),
    ChartSpec(
        "echo_loss",
        "J_echo",
        "nats per token",
        ("echo/loss", "echo_loss"),
        "the echo term: mean NLL of the clip tokens, mean over clips",
        always=True,
    ),
    ChartSpec(
        "coef", "λ of the step", "λ", ("echo/coef", "coef", "echo_coef"), "the echo coefficient applied", smooth=False
    ),
    ChartSpec(
        "clips_per_group",
        "Clips per mined group",
        "clips",
        ("echo/clips_per_group", "clips_per_group"),
        "under echo.selection top_k / soft",
    ),
    ChartSpec(
        "clip_weight",
        "Largest clip weight per group",
        "weight",
        ("echo/clip_weight_max", "clip_weight_max", "echo/clip_weight", "clip_weight"),
        "mean over mined groups of their largest clip weight: 1 when one clip takes all, 1/k when k share",
    ),
    ChartSpec("clips", "Clips", "clips", ("echo/clips", "clips"), "EchoClips mined in the step"),
    ChartSpec(
        "all_wrong_groups",
        "All-wrong groups",
        "fraction of groups",
        ("echo/all_wrong_groups", "all_wrong_groups"),
        "groups without a verified rollout: nothing to echo",
    ),
    ChartSpec(
        "val_accuracy",
        "Validation accuracy",
        "accuracy",
        ("val/accuracy_reward",),
        "EasyR1's validation, every trainer.val_freq steps",
        smooth=False,
    ),
)
"""The charts, in page order."""

KEY_NOTES = {"critic/score/mean": "the whole reward, format share included: the run logs no accuracy"}
"""What a stand-in metric name means, said beside the chart that uses it."""

TRACE_MARK = "#6b7280"

CSS = """
.echo-overview-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 10px; }
.echo-overview-chart { margin-bottom: 0; }
.echo-overview-chart h4 { margin: 0 0 2px 0; font-size: 1em; }
.echo-overview-chart .echo-about { color: #5b5b66; font-size: 0.82em; margin: 0 0 4px 0; }
.echo-overview-chart svg { width: 100%; height: auto; display: block; }
.echo-overview-chart svg text { font-family: ui-sans-serif, system-ui, sans-serif; fill: #1b1b1f; }
.echo-run-list { margin: 4px 0 0 0; padding-left: 18px; }
.echo-run-folder + .echo-run-folder { margin-top: 8px; border-top: 1px solid #ececf1; padding-top: 8px; }
.echo-warning { border: 1px solid #fcd34d; background: #fffbeb; color: #78350f; border-radius: 10px;
  padding: 10px 14px; margin-bottom: 10px; font-size: 0.9em; }
.echo-warning ul { margin: 4px 0 0 0; padding-left: 18px; }
"""
"""Styles of the overview views (added to :data:`echovl.demo.render.CSS` by the app)."""


@dataclass
class Series:
    """One run's line on a chart: its points (finite values only) and their trailing mean."""

    label: str
    color: str
    key: str
    steps: list[int]
    values: list[float]
    smoothed: list[float]


@dataclass
class Chart:
    """A chart's data: one series per run that logs the metric, and the runs that do not."""

    spec: ChartSpec
    series: list[Series]
    missing: list[str]


def build_charts(folders: Sequence[RunFolder], smoothing: int = 1) -> list[Chart]:
    """The charts of :data:`CHARTS` for these runs (all runs of all folders, coloured in order)."""
    runs = [run for folder in folders for run in folder.runs]
    charts = []
    for spec in CHARTS:
        series, missing = [], []
        for index, run in enumerate(runs):
            for key in spec.keys:
                steps, values = run.series(key)
                if steps:
                    color = PALETTE[index % len(PALETTE)]
                    window = smoothing if spec.smooth else 1
                    series.append(Series(run.label, color, key, steps, values, trailing_mean(values, window)))
                    break
            else:
                missing.append(run.label)
        if series or spec.always:
            charts.append(Chart(spec, series, missing))
    return charts


def _step_range(folders: Sequence[RunFolder]) -> tuple[int, int]:
    steps = [s for folder in folders for run in folder.runs for s in run.steps]
    return (min(steps), max(steps)) if steps else (0, 1)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def render_overview_chart(
    chart: Chart,
    step_range: tuple[int, int],
    trace_marks: Sequence[tuple[int, str]] = (),
    smoothing: int = 1,
) -> str:
    """One chart card: SVG lines over the steps in ``step_range``, traced steps marked under the x axis
    (``(step, note)`` each)."""
    spec = chart.spec
    head = (
        f'<div class="echo-card echo-overview-chart" data-chart="{spec.name}"><h4>{esc(spec.title)}</h4>'
        f'<p class="echo-about">{esc(spec.about)}</p>'
    )
    if not chart.series:
        keys = ", ".join(spec.keys)
        return head + f'<p class="echo-empty">Not logged by these runs (looked for {esc(keys)}).</p></div>'
    x_low, x_high = step_range
    values = [v for s in chart.series for v in (*s.values, *s.smoothed)]
    low, high = min(0.0, min(values)), max(values)
    high = high + 0.08 * (high - low) if high > low else low + 1.0
    ticks = axis_ticks(low, high)
    frame = LineChart(560, 250, step_range, (min(ticks[0], low), max(ticks[-1], high)))
    x, y, base = frame.x, frame.y, frame.base
    parts = []
    for step, note in trace_marks:
        if x_low <= step <= x_high:
            cx = x(step)
            parts.append(
                f'<path class="echo-trace-mark" data-step="{step}" d="M{cx:.1f},{base + 2} l-4,7 h8 z" '
                f'fill="{TRACE_MARK}"><title>{esc(note)}</title></path>'
            )
    smooth = smoothing > 1
    for series in chart.series:
        raw = frame.points(zip(series.steps, series.values))
        group = [f'<g class="echo-run-series" data-run="{esc(series.label)}" data-key="{esc(series.key)}">']
        group.append(
            f'<polyline points="{raw}" fill="none" stroke="{series.color}" '
            + ('stroke-width="1.1" stroke-opacity="0.35"/>' if smooth else 'stroke-width="2"/>')
        )
        if smooth:
            line = frame.points(zip(series.steps, series.smoothed))
            group.append(f'<polyline points="{line}" fill="none" stroke="{series.color}" stroke-width="2.2"/>')
        if len(series.steps) <= 400:  # hover values; a long run keeps its lines only
            for s, v in zip(series.steps, series.values):
                group.append(
                    f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="2.4" fill="{series.color}"'
                    + (' fill-opacity="0.5"' if smooth else "")
                    + f"><title>{esc(series.label)}, step {s}: {_fmt(v)}</title></circle>"
                )
        group.append("</g>")
        parts.append("".join(group))
    svg = frame.svg(
        parts,
        x_ticks=[t for t in (axis_ticks(x_low, x_high) if x_high > x_low else [x_low]) if t == int(t)],
        y_ticks=ticks,
        x_label="training step",
        y_label=esc(spec.y_label),
        label=f"{esc(spec.title)} over training steps",
    )
    legend = "".join(
        f'<span class="echo-legend-item"><span class="echo-swatch" style="border-top-color: {s.color}"></span>'
        f"{esc(s.label)}</span>"
        for s in chart.series
    )
    keys = sorted({s.key for s in chart.series})
    notes = [f"logged as {', '.join(k + (f' ({KEY_NOTES[k]})' if k in KEY_NOTES else '') for k in keys)}"]
    if chart.missing:
        notes.append(f"not logged by {', '.join(chart.missing)}")
    if smooth:
        notes.append(f"faint: per step; bold: trailing mean over {smoothing} steps")
    if trace_marks:
        notes.append("▲ traced step")
    return (
        head + svg + f'<div class="echo-legend">{legend}</div><p class="echo-about">{esc("; ".join(notes))}</p></div>'
    )


def _trace_marks(folders: Sequence[RunFolder]) -> list[tuple[int, str]]:
    marks = []
    for folder in folders:
        for step in folder.trace_steps:
            where = f" of {folder.path.name}" if len(folders) > 1 else ""
            marks.append((step, f"traces{where} at step {step}: open them with the traced-step selector"))
    return marks


def render_charts(folders: Sequence[RunFolder], smoothing: int = 1) -> str:
    """All charts of the opened folders, in a grid."""
    smoothing = max(int(smoothing or 1), 1)
    charts = build_charts(folders, smoothing)
    step_range, marks = _step_range(folders), _trace_marks(folders)
    cards = "".join(
        render_overview_chart(chart, step_range, marks, smoothing if chart.spec.smooth else 1) for chart in charts
    )
    return f'<div class="echo-overview-grid">{cards}</div>'


def _halves(run, keys: Sequence[str]) -> str | None:
    """``first-half mean -> second-half mean`` of the first of ``keys`` that the run logs."""
    for key in keys:
        _, values = run.series(key)
        if len(values) >= 2:
            half = len(values) // 2
            first, second = values[:half], values[half:]
            return f"{sum(first) / len(first):.3f} → {sum(second) / len(second):.3f}"
    return None


KINDS = {"easyr1": "EasyR1 experiment log", "cpu": "CPU experiment metrics"}


def render_run_summary(folders: Sequence[RunFolder]) -> str:
    """What was opened: per folder its log, runs and steps, first-half -> second-half accuracy and degenerate
    fraction, its trace folder; then a warning box naming every skipped line."""
    spec = {chart.name: chart for chart in CHARTS}
    items, problems = [], []
    for folder in folders:
        runs = []
        for run in folder.runs:
            steps = f"steps {run.steps[0]}–{run.steps[-1]} ({len(run.steps)} logged)"
            halves = [
                f"{name} {value}"
                for name, chart in (("accuracy", "accuracy"), ("degenerate groups", "degenerate_groups"))
                if (value := _halves(run, spec[chart].keys))
            ]
            halves_text = f"; first half → second half: {', '.join(halves)}" if halves else ""
            runs.append(f"<li><b>{esc(run.label)}</b>: {steps}{esc(halves_text)}</li>")
        if folder.traces is not None:
            shown = ", ".join(str(s) for s in folder.trace_steps[:12]) + (
                ", …" if len(folder.trace_steps) > 12 else ""
            )
            traces = f"traces: {esc(folder.traces)} ({len(folder.trace_steps)} traced steps: {esc(shown)})"
        else:
            traces = "traces: none found (looked for echo.trace_dir in experiment_config.json, echo_traces/, traces/)"
        items.append(
            f'<div class="echo-run-folder"><div><b>{esc(KINDS.get(folder.kind, folder.kind))}</b>: '
            f"{esc(folder.log)}</div>"
            f'<ul class="echo-run-list">{"".join(runs)}</ul><div class="echo-meta">{traces}</div></div>'
        )
        problems += folder.problems
    warning = ""
    if problems:
        shown = "".join(f"<li>{esc(p)}</li>" for p in problems[:10])
        more = f"<li>… and {len(problems) - 10} more</li>" if len(problems) > 10 else ""
        warning = (
            f'<div class="echo-warning" role="alert">⚠ {len(problems)} problem(s) reading the logs; the charts show '
            f"the rest:<ul>{shown}{more}</ul></div>"
        )
    return warning + f'<div class="echo-card echo-run-summary">{"".join(items)}</div>'


class OverviewView(NamedTuple):
    """The HTML views of the overview tab."""

    summary: str
    charts: str


def render_overview(folders: Sequence[RunFolder], smoothing: int = 1) -> OverviewView:
    """The summary and the charts of the opened folders."""
    return OverviewView(render_run_summary(folders), render_charts(folders, smoothing))


def trace_choices(folders: Sequence[RunFolder]) -> list[tuple[str, str]]:
    """``(label, value)`` per traced step of each folder, for a dropdown; ``value`` is ``"folder:step"`` (folder
    = its index in ``folders``), read back by :func:`trace_target`."""
    choices = []
    for index, folder in enumerate(folders):
        for step in folder.trace_steps:
            label = f"step {step}" if len(folders) == 1 else f"{folder.path.name}: step {step}"
            choices.append((label, f"{index}:{step}"))
    return choices


def trace_target(trace_folders: Sequence[str | None], value: str) -> tuple[str, int]:
    """The trace folder and step of a :func:`trace_choices` value, given each folder's trace folder."""
    try:
        index, step = (int(part) for part in str(value).split(":"))
        folder = trace_folders[index]
    except (ValueError, IndexError):
        raise RunLogError(f"not a traced step: {value!r}") from None
    if not folder:
        raise RunLogError(f"run folder {index} has no traces")
    return folder, step
