"""HTML views of one group (a trace record, see :mod:`echovl.traces`): summary, step-entropy chart, rollouts.

Both demo tabs render through :func:`render_group`. The chart is an inline SVG (no JavaScript, nothing to
download), so it shows in any browser, offline, and tests can read it. Indices are 0-based as in trace files:
"rollout 2, step 1" is ``record["rollouts"][2]["steps"][1]``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import NamedTuple

from .charts import PALETTE, LineChart, axis_ticks

__all__ = [
    "CSS",
    "GroupView",
    "RecordError",
    "check_record",
    "entropy_range",
    "render_chart",
    "render_error",
    "render_group",
    "render_rollouts",
    "render_summary",
    "step_shade",
]

SHADE_RGB = (255, 112, 67)
"""Colour of the entropy shading; its opacity grows with the step's entropy."""

CLIP_COLOR = "#4338ca"

CSS = f"""
.echo-card {{ border: 1px solid #d6d6de; border-radius: 10px; padding: 12px 14px; background: #ffffff;
  color: #1b1b1f; margin-bottom: 10px; }}
.echo-summary .echo-verdict {{ font-size: 1.05em; font-weight: 600; margin-bottom: 8px; }}
.echo-summary.echo-degenerate {{ border-left: 6px solid #b45309; }}
.echo-summary.echo-mixed {{ border-left: 6px solid #15803d; }}
.echo-summary.echo-all-wrong {{ border-left: 6px solid #b91c1c; }}
.echo-stats {{ display: flex; flex-wrap: wrap; gap: 8px 22px; margin: 6px 0; }}
.echo-stat {{ display: flex; flex-direction: column; }}
.echo-stat .echo-stat-label {{ font-size: 0.78em; color: #5b5b66; text-transform: uppercase; letter-spacing: 0.03em; }}
.echo-stat .echo-stat-value {{ font-size: 1.15em; font-weight: 600; font-variant-numeric: tabular-nums; }}
.echo-notes {{ color: #5b5b66; font-size: 0.88em; margin: 6px 0 0 0; padding-left: 18px; list-style: disc; }}
.echo-prompt summary {{ cursor: pointer; color: #5b5b66; font-size: 0.9em; }}
.echo-prompt pre {{ white-space: pre-wrap; font-size: 0.85em; background: #f6f6f9; padding: 8px; border-radius: 6px; }}
.echo-error {{ border: 1px solid #fca5a5; background: #fef2f2; color: #7f1d1d; border-radius: 10px;
  padding: 12px 14px; font-weight: 500; }}
.echo-chart-card h4, .echo-rollouts h4 {{ margin: 0 0 6px 0; font-size: 1em; }}
.echo-chart {{ width: 100%; height: auto; max-width: 900px; display: block; }}
.echo-chart text {{ font-family: ui-sans-serif, system-ui, sans-serif; fill: #1b1b1f; }}
.echo-legend {{ display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.85em; margin-top: 4px; }}
.echo-legend-item {{ display: inline-flex; align-items: center; gap: 5px; }}
.echo-swatch {{ display: inline-block; width: 22px; height: 0; border-top-width: 3px; border-top-style: solid; }}
.echo-scale {{ display: flex; align-items: center; gap: 8px; font-size: 0.85em; color: #5b5b66; margin: 2px 0 8px 0; }}
.echo-scale-bar {{ width: 160px; height: 10px; border-radius: 3px; border: 1px solid #d6d6de;
  background: linear-gradient(to right, rgba({SHADE_RGB[0]},{SHADE_RGB[1]},{SHADE_RGB[2]},0.06),
  rgba({SHADE_RGB[0]},{SHADE_RGB[1]},{SHADE_RGB[2]},0.75)); }}
.echo-rollout {{ border: 1px solid #d6d6de; border-radius: 8px; margin: 8px 0; background: #ffffff; color: #1b1b1f; }}
.echo-rollout.echo-chosen {{ border: 2px solid {CLIP_COLOR}; box-shadow: 0 0 0 3px rgba(67, 56, 202, 0.12); }}
.echo-rollout-head {{ display: flex; flex-wrap: wrap; align-items: center; gap: 6px 12px; padding: 6px 10px;
  border-bottom: 1px solid #ececf1; font-size: 0.9em; }}
.echo-rollout-name {{ font-weight: 600; }}
.echo-badge {{ border-radius: 999px; padding: 1px 9px; font-size: 0.85em; font-weight: 600; }}
.echo-badge.echo-ok {{ background: #dcfce7; color: #14532d; }}
.echo-badge.echo-bad {{ background: #fee2e2; color: #7f1d1d; }}
.echo-badge.echo-clip-badge {{ background: {CLIP_COLOR}; color: #ffffff; }}
.echo-meta {{ color: #5b5b66; }}
.echo-text {{ white-space: pre-wrap; word-break: break-word; font-family: ui-monospace, SFMono-Regular, Menlo,
  Consolas, monospace; font-size: 0.86em; line-height: 1.75; padding: 8px 10px; margin: 0; color: #1b1b1f; }}
.echo-step {{ border-radius: 3px; }}
.echo-clip {{ outline: 2px solid {CLIP_COLOR}; outline-offset: 1px; border-radius: 3px; }}
.echo-step.echo-chosen-step {{ text-decoration: underline 2px {CLIP_COLOR}; text-underline-offset: 3px; }}
.echo-clip-end {{ font-family: ui-sans-serif, system-ui, sans-serif; font-size: 0.78em; background: {CLIP_COLOR};
  color: #ffffff; border-radius: 4px; padding: 0 5px; margin-left: 4px; white-space: nowrap; }}
"""
"""Page styles for the classes used below (passed to ``launch(css=...)``)."""


def esc(value) -> str:
    """``value`` as HTML text (quotes escaped too)."""
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


class RecordError(ValueError):
    """A record that cannot be rendered; the message says which field is wrong."""


def check_record(record: dict) -> None:
    """Raise :class:`RecordError` if ``record`` lacks what the views need (e.g. a hand-edited trace line)."""
    if not isinstance(record.get("rollouts"), list):
        raise RecordError("'rollouts' must be a list")
    for index, rollout in enumerate(record["rollouts"]):
        where = f"rollouts[{index}]"
        if not isinstance(rollout, dict) or not isinstance(rollout.get("text"), str):
            raise RecordError(f"{where} must be an object with a 'text' string")
        steps = rollout.get("steps")
        if not isinstance(steps, list):
            raise RecordError(f"{where}.steps must be a list")
        for number, step in enumerate(steps):
            chars = step.get("chars") if isinstance(step, dict) else None
            if not (isinstance(chars, list) and len(chars) == 2 and all(isinstance(c, int) for c in chars)):
                raise RecordError(f"{where}.steps[{number}].chars must be [start, end]")
            if not 0 <= chars[0] <= chars[1] <= len(rollout["text"]):
                raise RecordError(f"{where}.steps[{number}].chars {chars} is outside the text")
            entropy = step.get("entropy")
            if entropy is not None and not isinstance(entropy, (int, float)):
                raise RecordError(f"{where}.steps[{number}].entropy must be a number or null")
    if record.get("clip") is not None:
        _check_clip(record, record["clip"], "clip", "'clip' must be null or an object")
    clips = record.get("clips")
    if clips is not None and not isinstance(clips, list):
        raise RecordError("'clips' must be a list")
    for number, clip in enumerate(clips or ()):
        _check_clip(record, clip, f"clips[{number}]", f"clips[{number}] must be an object")


def _check_clip(record: dict, clip, where: str, not_an_object: str) -> None:
    """One clip (``clip``, or an entry of ``clips``) points at a step of a rollout of the group."""
    if not (isinstance(clip, dict) and isinstance(clip.get("rollout"), int) and isinstance(clip.get("step"), int)):
        raise RecordError(f"{not_an_object} with integer 'rollout' and 'step'")
    if not 0 <= clip["rollout"] < len(record["rollouts"]):
        raise RecordError(f"{where}.rollout {clip['rollout']} is not a rollout of the group")
    if not 0 <= clip["step"] < len(record["rollouts"][clip["rollout"]]["steps"]):
        raise RecordError(f"{where}.step {clip['step']} is not a step of rollout {clip['rollout']}")


def all_clips(record: dict) -> list[dict]:
    """Every EchoClip of the group: ``clips`` (several under ``echo.selection`` top_k / soft, with weights), or
    the single ``clip`` of older traces."""
    clips = record.get("clips")
    if clips:
        return list(clips)
    return [record["clip"]] if record.get("clip") is not None else []


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def entropy_range(record: dict) -> float:
    """The largest step entropy of the group (the top of the shading scale); 0 when there is none."""
    values = [_finite(s.get("entropy")) for r in record["rollouts"] for s in r["steps"]]
    return max([v for v in values if v is not None], default=0.0)


def step_shade(entropy: float | None, top: float) -> str:
    """CSS background of a step: transparent without entropy, more opaque the higher its entropy."""
    entropy = _finite(entropy)
    if entropy is None:
        return "transparent"
    alpha = 0.06 + 0.69 * (max(entropy, 0.0) / top if top > 0 else 0.0)
    return f"rgba({SHADE_RGB[0]}, {SHADE_RGB[1]}, {SHADE_RGB[2]}, {min(alpha, 0.75):.3f})"


def _counts(record: dict) -> tuple[int, int]:
    flags = [bool(r.get("verified")) for r in record["rollouts"]]
    return sum(flags), len(flags)


def _kind(record: dict) -> str:
    verified, total = _counts(record)
    if total and verified == total:
        return "degenerate"
    return "all-wrong" if verified == 0 else "mixed"


def _weight(clip: dict) -> float:
    """A clip's weight in J_echo (1 for the paper's one clip per group, and in traces without weights)."""
    weight = _finite(clip.get("weight"))
    return 1.0 if weight is None else weight


def _clip_table(clips: list[dict]) -> str:
    rows = "".join(
        f'<tr data-rollout="{c["rollout"]}" data-step="{c["step"]}"><td>#{c["rollout"]}</td><td>#{c["step"]}</td>'
        f"<td>{esc(c.get('length', '?'))}</td><td>{_fmt(_finite(c.get('step_entropy')))}</td>"
        f"<td>{_fmt(_weight(c), 3)}</td></tr>"
        for c in sorted(clips, key=_weight, reverse=True)
    )
    return (
        '<table class="echo-clip-table"><thead><tr><th>rollout</th><th>step</th><th>tokens</th>'
        f"<th>step entropy</th><th>weight</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def render_summary(record: dict, notes: Sequence[str] = ()) -> str:
    """Verdict (degenerate / mixed / all wrong), the chosen rollout and step, clip length and entropy."""
    verified, total = _counts(record)
    kind = _kind(record)
    clip = record.get("clip")
    if kind == "degenerate":
        verdict = (
            f"Degenerate group: all {total} rollouts verified. Every GRPO advantage is 0, so the RL term gives no "
            "gradient here; the EchoClip is the only training signal."
        )
    elif kind == "all-wrong":
        verdict = f"No rollout verified (0 of {total}): nothing to echo, no EchoClip."
    else:
        verdict = (
            f"Mixed group: {verified} of {total} rollouts verified. The RL term has a signal; EchoRL adds the clip."
        )
    if clip is None and kind != "all-wrong":
        verdict += " No EchoClip was mined (scope or minimum step length)."
    stats = [
        ("verified", f"{verified} / {total}"),
        ("chosen rollout", "—" if clip is None else f"#{clip['rollout']}"),
        ("chosen step", "—" if clip is None else f"#{clip['step']}"),
        ("clip length", "—" if clip is None else f"{clip.get('length', '?')} tokens"),
        ("step entropy", "—" if clip is None else f"{_fmt(_finite(clip.get('step_entropy')))} nats"),
        ("training step", esc(record.get("train_step", "—"))),
        ("group", esc(record.get("group", "—"))),
        ("reference answer", esc(record.get("answer", "—"))),
    ]
    clips = all_clips(record)
    if len(clips) > 1:  # top_k / soft selection: every clip with its weight in J_echo
        stats.insert(5, ("clips", f"{len(clips)} (weights sum to {_fmt(sum(_weight(c) for c in clips), 3)})"))
    stat_html = "".join(
        f'<div class="echo-stat"><span class="echo-stat-label">{esc(label)}</span>'
        f'<span class="echo-stat-value">{value}</span></div>'
        for label, value in stats
    )
    notes_html = "".join(f"<li>{esc(note)}</li>" for note in notes)
    prompt = record.get("prompt") or ""
    return (
        f'<div class="echo-card echo-summary echo-{kind}" data-kind="{kind}">'
        f'<div class="echo-verdict">{esc(verdict)}</div>'
        f'<div class="echo-stats">{stat_html}</div>'
        + (_clip_table(clips) if len(clips) > 1 else "")
        + f'<details class="echo-prompt"><summary>prompt as the model saw it</summary><pre>{esc(prompt)}</pre></details>'
        + (f'<ul class="echo-notes">{notes_html}</ul>' if notes else "")
        + "</div>"
    )


def render_chart(record: dict) -> str:
    """Step entropy per rollout: steps on x, entropy on y, one line per rollout, the chosen step ringed."""
    rollouts = record["rollouts"]
    num_steps = max((len(r["steps"]) for r in rollouts), default=0)
    top = entropy_range(record)
    if (
        num_steps == 0
        or top <= 0
        and not any(_finite(s.get("entropy")) is not None for r in rollouts for s in r["steps"])
    ):
        return '<div class="echo-card echo-chart-card"><h4>Step entropy per rollout</h4><p>No steps to plot.</p></div>'
    ticks = axis_ticks(0.0, top * 1.08)
    y_max = max(ticks[-1], top * 1.08) or 1.0
    chart = LineChart(760, 300, (0, num_steps - 1), (0.0, y_max), left=56, right=18, top=30, bottom=44)
    x, y = chart.x, chart.y
    parts = []
    clip = record.get("clip")
    for index, rollout in enumerate(rollouts):
        color = PALETTE[index % len(PALETTE)]
        verified = bool(rollout.get("verified"))
        dash = "" if verified else ' stroke-dasharray="6 4"'
        points = [(s, _finite(step.get("entropy"))) for s, step in enumerate(rollout["steps"])]
        runs, run = [], []
        for step, value in points:  # a step without text tokens breaks the line
            if value is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append((step, value))
        if run:
            runs.append(run)
        mark = "verified" if verified else "not verified"
        series = [f'<g class="echo-series" data-rollout="{index}" data-verified="{str(verified).lower()}">']
        for run in runs:
            series.append(
                f'<polyline points="{chart.points(run)}" fill="none" stroke="{color}" stroke-width="2.2"{dash} '
                f'stroke-linejoin="round"/>'
            )
        for step, value in points:
            if value is not None:
                series.append(
                    f'<circle cx="{x(step):.1f}" cy="{y(value):.1f}" r="3.6" fill="{color}">'
                    f"<title>rollout {index} ({mark}), step {step}: {value:.3f} nats</title></circle>"
                )
        series.append("</g>")
        parts.append("".join(series))
    clips = all_clips(record)
    for other in clips[1:]:  # top_k / soft: the other clips, thinner rings, their weight on hover
        step, rollout = other["step"], other["rollout"]
        value = _finite(other.get("step_entropy"))
        if value is None:
            value = _finite(rollouts[rollout]["steps"][step].get("entropy")) or 0.0
        parts.append(
            f'<g class="echo-other-clip" data-rollout="{rollout}" data-step="{step}">'
            f'<circle cx="{x(step):.1f}" cy="{y(value):.1f}" r="7" fill="none" stroke="{CLIP_COLOR}" '
            f'stroke-width="1.4" stroke-dasharray="2 2"><title>EchoClip: rollout {rollout}, step {step}, '
            f"weight {_weight(other):.3f}</title></circle></g>"
        )
    if clip is not None:
        step = clip["step"]
        value = _finite(clip.get("step_entropy"))
        if value is None:
            value = _finite(rollouts[clip["rollout"]]["steps"][step].get("entropy")) or 0.0
        cx, cy = x(step), y(value)
        anchor = "end" if cx > x(0.7 * (num_steps - 1)) else "start"
        dx = -12 if anchor == "end" else 12
        parts.append(
            f'<g class="echo-chosen-step" data-rollout="{clip["rollout"]}" data-step="{step}">'
            f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{chart.top}" y2="{chart.base}" stroke="{CLIP_COLOR}" '
            f'stroke-dasharray="3 3" stroke-width="1.2"/>'
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="none" stroke="{CLIP_COLOR}" stroke-width="2.6"/>'
            f'<text x="{cx + dx:.1f}" y="{chart.top - 10}" text-anchor="{anchor}" font-size="12" font-weight="600" '
            f'style="fill: {CLIP_COLOR}">EchoClip: rollout {clip["rollout"]}, step {step} ({value:.3f} nats)'
            + (f", weight {_weight(clip):.3f}" if len(clips) > 1 else "")
            + "</text></g>"
        )
    label_every = max(1, math.ceil(num_steps / 16))
    svg = chart.svg(
        parts,
        x_ticks=range(0, num_steps, label_every),
        y_ticks=ticks,
        x_label="step",
        y_label="step entropy (nats)",
        label="step entropy per rollout",
        css_class="echo-chart",
    )
    legend = "".join(
        f'<span class="echo-legend-item"><span class="echo-swatch" style="border-top-color: '
        f'{PALETTE[i % len(PALETTE)]}; border-top-style: {"solid" if r.get("verified") else "dashed"}"></span>'
        f"rollout {i} {'✓' if r.get('verified') else '✗'}</span>"
        for i, r in enumerate(rollouts)
    )
    return (
        '<div class="echo-card echo-chart-card"><h4>Step entropy per rollout</h4>'
        + svg
        + f'<div class="echo-legend">{legend}<span class="echo-legend-item">solid = verified, dashed = not; '
        f'<span style="color: {CLIP_COLOR}; font-weight: 600">ring = EchoClip step</span></span></div></div>'
    )


def _rollout_html(index: int, rollout: dict, clip: dict | None, top: float, others: Sequence[dict] = ()) -> str:
    chosen = clip is not None and clip["rollout"] == index
    text, steps = rollout["text"], rollout["steps"]
    pieces, position = [], 0
    clip_open = False
    if chosen:
        pieces.append('<span class="echo-clip" title="EchoClip: the supervised prefix">')
        clip_open = True
    for number, step in enumerate(steps):
        start, end = step["chars"]
        if start > position:  # text outside any step (should not happen): shown unshaded
            pieces.append(esc(text[position:start]))
        entropy = _finite(step.get("entropy"))
        classes = "echo-step" + (" echo-chosen-step" if chosen and number == clip["step"] else "")
        title = f"step {number}: " + (
            f"{entropy:.3f} nats over {step.get('text_tokens', '?')} text tokens" if entropy is not None else "no text"
        )
        piece = text[start:end]
        closes_clip = clip_open and number == clip["step"]
        # the clip's end marker goes before the step's trailing newline, on the step's own line
        body = piece.rstrip("\n") if closes_clip else piece
        pieces.append(
            f'<span class="{classes}" data-step="{number}" style="background: {step_shade(entropy, top)}" '
            f'title="{esc(title)}">{esc(body)}</span>'
        )
        position = max(position, end)
        if closes_clip:
            clip_open = False
            pieces.append(
                f'</span><span class="echo-clip-end">◀ EchoClip ends: step {number}, {_fmt(entropy)} nats</span>'
                + esc(piece[len(body) :])
            )
    if clip_open:
        pieces.append("</span>")
    if position < len(text):
        pieces.append(esc(text[position:]))
    verified = bool(rollout.get("verified"))
    badge = (
        '<span class="echo-badge echo-ok">✓ verified</span>'
        if verified
        else '<span class="echo-badge echo-bad">✗ not verified</span>'
    )
    meta = [
        f"accuracy {_fmt(_finite(rollout.get('accuracy')), 2)}",
        f"reward {_fmt(_finite(rollout.get('reward')), 2)}",
        f"{rollout.get('num_tokens', '?')} tokens",
        f"{len(steps)} steps",
    ]
    head = f'<span class="echo-rollout-name">Rollout {index}</span>{badge}<span class="echo-meta">{" · ".join(meta)}</span>'
    if chosen:
        head += (
            f'<span class="echo-badge echo-clip-badge">EchoClip: steps 0–{clip["step"]}, '
            f"{esc(clip.get('length', '?'))} tokens"
            + (f", weight {_weight(clip):.3f}" if others or clip.get("weight", 1) != 1 else "")
            + "</span>"
        )
    for other in others:  # top_k / soft: the further clips in this rollout (nested prefixes of the text)
        head += (
            f'<span class="echo-badge echo-clip-badge echo-other-clip-badge">also an EchoClip: steps 0–{other["step"]}, '
            f"{esc(other.get('length', '?'))} tokens, weight {_weight(other):.3f}</span>"
        )
    return (
        f'<div class="echo-rollout{" echo-chosen" if chosen or others else ""}" data-rollout="{index}" '
        f'data-verified="{str(verified).lower()}"><div class="echo-rollout-head">{head}</div>'
        f'<pre class="echo-text">{"".join(pieces)}</pre></div>'
    )


def render_rollouts(record: dict) -> str:
    """Each rollout's text with steps shaded by entropy, its verified flag, and the EchoClip outlined."""
    top = entropy_range(record)
    clip = record.get("clip")
    clips = all_clips(record)
    others = clips[1:]
    rank: dict[int, int] = {}  # a rollout's first (heaviest) clip
    for number, c in enumerate(clips):
        rank.setdefault(c["rollout"], number)
    # rollouts with clips first (the chosen clip's first), then the others in their order
    order = sorted(range(len(record["rollouts"])), key=lambda i: rank.get(i, len(clips)))
    cards = "".join(
        _rollout_html(i, record["rollouts"][i], clip, top, [c for c in others if c["rollout"] == i]) for i in order
    )
    return (
        '<div class="echo-rollouts"><h4>Rollouts</h4>'
        f'<div class="echo-scale"><span>step entropy</span><span>0</span><span class="echo-scale-bar"></span>'
        f'<span>{top:.3f} nats</span><span>· <span class="echo-clip" style="padding: 0 4px">outlined</span> = '
        "EchoClip (supervised prefix)</span></div>"
        f"{cards}</div>"
    )


class GroupView(NamedTuple):
    """The HTML views of one group."""

    summary: str
    chart: str
    rollouts: str


def render_group(record: dict, notes: Sequence[str] = ()) -> GroupView:
    """The three views of one group; an unrenderable record gives an error message instead."""
    try:
        check_record(record)
    except RecordError as error:
        return GroupView(render_error(f"cannot show group {record.get('group', '?')}: {error}"), "", "")
    return GroupView(render_summary(record, notes), render_chart(record), render_rollouts(record))


def render_error(message: str) -> str:
    """A visible error box (the demo never shows only a stack trace)."""
    return f'<div class="echo-error" role="alert">⚠ {esc(message)}</div>'
