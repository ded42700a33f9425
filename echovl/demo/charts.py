"""The demo's line charts as inline SVG (no JavaScript, nothing downloaded; tests read them): one frame for both the
step-entropy chart of a group and the overview's charts over training steps, and the trailing mean that smooths a
noisy series (also the CPU experiment's plot's).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["PALETTE", "LineChart", "axis_ticks", "trailing_mean"]

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
"""Series colours (cycled beyond ten)."""


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of each value and the ``window - 1`` before it (fewer at the start), NaN values left out (NaN where all
    are); ``window`` 1 is the identity."""
    window = max(int(window), 1)
    out = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(recent) / len(recent) if recent else math.nan)
    return out


def axis_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round axis ticks (multiples of 1, 2, 2.5 or 5 times a power of ten) from ``low`` up to ``high``, about
    ``count`` intervals; ``[low]`` when the range is empty."""
    if not high > low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9)
    return [i * step for i in range(first, int(math.floor(high / step + 1e-9)) + 1)]


@dataclass(frozen=True)
class LineChart:
    """A chart's frame: :meth:`x` and :meth:`y` place values inside the margins; :meth:`svg` draws the grid, the
    tick labels, the axes and their titles under the caller's lines (:meth:`points`) and marks."""

    width: int
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    left: int = 58
    right: int = 14
    top: int = 12
    bottom: int = 44

    @property
    def base(self) -> float:
        """The x axis (the bottom of the plot)."""
        return self.height - self.bottom

    def x(self, value: float) -> float:
        low, high = self.x_range
        span = self.width - self.left - self.right
        return self.left + (span / 2 if high == low else span * (value - low) / (high - low))

    def y(self, value: float) -> float:
        low, high = self.y_range
        return self.top + (self.base - self.top) * (1 - (value - low) / (high - low))

    def points(self, pairs: Iterable[tuple[float, float]]) -> str:
        """``(x, y)`` values as the ``points`` of a polyline."""
        return " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in pairs)

    def svg(
        self,
        body: Sequence[str],
        *,
        x_ticks: Sequence[float],
        y_ticks: Sequence[float],
        x_label: str,
        y_label: str,
        label: str,
        css_class: str | None = None,
    ) -> str:
        """The chart: the frame, then ``body`` (SVG elements, escaped by the caller; ``label`` too)."""
        left, right, width = self.left, self.right, self.width
        plot_mid = self.top + (self.base - self.top) / 2
        parts = [
            "<svg"
            + (f' class="{css_class}"' if css_class else "")
            + f' viewBox="0 0 {width} {self.height}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{label}">'
        ]
        for tick in y_ticks:  # horizontal grid and y labels
            parts.append(
                f'<line x1="{left}" x2="{width - right}" y1="{self.y(tick):.1f}" y2="{self.y(tick):.1f}" '
                f'stroke="#e4e4ea"/><text x="{left - 6}" y="{self.y(tick) + 4:.1f}" text-anchor="end" '
                f'font-size="11">{tick:.4g}</text>'
            )
        for tick in x_ticks:
            parts.append(
                f'<text x="{self.x(tick):.1f}" y="{self.base + 18}" text-anchor="middle" font-size="11">{tick:g}</text>'
            )
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{self.base}" y2="{self.base}" stroke="#9b9ba6"/>'
            f'<line x1="{left}" x2="{left}" y1="{self.top}" y2="{self.base}" stroke="#9b9ba6"/>'
            f'<text x="{left + (width - left - right) / 2:.1f}" y="{self.height - 5}" text-anchor="middle" '
            f'font-size="12">{x_label}</text>'
            f'<text transform="translate(14 {plot_mid:.1f}) rotate(-90)" text-anchor="middle" font-size="12">'
            f"{y_label}</text>"
        )
        return "".join(parts) + "".join(body) + "</svg>"
