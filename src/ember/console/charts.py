"""Stacked bar charts drawn on the server as inline SVG geometry (no script, no chart library): each
bar is a day, each segment one series (an endpoint or a volume). Pure: values in, rectangles out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ember.core.money import format_dollars

DAY_S = 86400
PALETTE = (
    "#d9480f",
    "#1c7ed6",
    "#37b24d",
    "#f59f00",
    "#7048e8",
    "#0ca678",
    "#e64980",
    "#495057",
    "#74b816",
    "#1098ad",
)
WIDTH, HEIGHT = 900, 260
LEFT, RIGHT, TOP, BOTTOM = 76, 12, 12, 28


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    color: str
    seconds: int
    micros: int

    @property
    def cost(self) -> str:
        return "$" + format_dollars(self.micros)


@dataclass(frozen=True)
class Segment:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str  # shown on hover
    series: str
    day: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int  # where the plot starts, right of the y labels
    segments: list[Segment]
    x_labels: list[Label]
    y_labels: list[Label]
    gridlines: list[float]  # y of each horizontal line
    series: list[Series]
    total_micros: int

    @property
    def total(self) -> str:
        return "$" + format_dollars(self.total_micros)


def day_text(day: int) -> str:
    """A day (days since the epoch) as YYYY-MM-DD, UTC."""
    return datetime.fromtimestamp(day * DAY_S, UTC).strftime("%Y-%m-%d")


def nice_ceiling(micros: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `micros` (at least one micro-dollar)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= micros:
                return m * step
        step *= 10


def short_dollars(micros: int) -> str:
    """An axis label: as many decimals as the amount needs, at least two."""
    text = format_dollars(micros).rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def stacked_bars(
    days: Sequence[int],
    values: Mapping[tuple[str, int], tuple[int, int]],
    labels: Mapping[str, str],
) -> Chart:
    """A chart of `days` (oldest first), one bar each, stacked by series. `values` maps (series key,
    day) to (seconds, micro-dollars); `labels` names each series key. Series are ordered by their total,
    largest first (bottom of each bar), and coloured in that order."""
    totals: dict[str, list[int]] = {}
    for (key, _day), (seconds, micros) in values.items():
        acc = totals.setdefault(key, [0, 0])
        acc[0] += seconds
        acc[1] += micros
    order = sorted(totals, key=lambda k: (-totals[k][1], labels.get(k, k)))
    series = [
        Series(k, labels.get(k, k), PALETTE[i % len(PALETTE)], totals[k][0], totals[k][1])
        for i, k in enumerate(order)
    ]
    day_totals = {d: sum(values.get((k, d), (0, 0))[1] for k in order) for d in days}
    top = nice_ceiling(max(day_totals.values(), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(days))
    bar_w = slot * 0.7
    segments: list[Segment] = []
    x_labels: list[Label] = []
    every = 1 if len(days) <= 16 else 3
    for i, d in enumerate(days):
        x = LEFT + i * slot + (slot - bar_w) / 2
        base = float(TOP + plot_h)
        text = day_text(d)
        for s in series:
            seconds, micros = values.get((s.key, d), (0, 0))
            if micros <= 0:
                continue
            h = plot_h * micros / top
            base -= h
            title = f"{s.label} · {text} · ${format_dollars(micros)} · {seconds} s"
            segments.append(Segment(x, base, bar_w, h, s.color, title, s.key, text))
        if i % every == 0 or i == len(days) - 1:
            x_labels.append(Label(x + bar_w / 2, HEIGHT - 8, text[5:]))
    y_labels, grid = [], []
    for frac in (0.0, 0.5, 1.0):
        y = TOP + plot_h * (1 - frac)
        grid.append(y)
        y_labels.append(Label(LEFT - 6, y + 4, short_dollars(int(top * frac))))
    return Chart(WIDTH, HEIGHT, LEFT, segments, x_labels, y_labels, grid, series, sum(day_totals.values()))
