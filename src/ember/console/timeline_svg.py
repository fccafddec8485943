"""The geometry of the endpoint page's worker-state timeline: lanes from `core.timeline` placed on an
SVG canvas (the template draws the shapes), with a time axis and a hover text for each segment."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

from ember.core.timeline import Lane, fraction

LABEL_W = 190.0  # the worker ids' column
PLOT_W = 1000.0
LANE_H = 20.0
BAR_H = 14.0
AXIS_H = 22.0
MIN_W = 1.5  # a segment too short to see still gets a sliver, so it can be hovered
TICKS_S = (60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)  # the first giving at most MAX_TICKS
MAX_TICKS = 8


def hms(at: float | None) -> str:
    """A UTC time of day, HH:MM:SS; a dash for none."""
    if at is None:
        return "–"
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")


def when(at: float | None) -> str:
    """A UTC date and time, YYYY-MM-DD HH:MM:SS.mmm; a dash for none."""
    if at is None:
        return "–"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def duration(seconds: float | None) -> str:
    """A duration for people: 420 ms, 6.2 s, 3 min 4 s, 1 h 2 min; a dash for none."""
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


@dataclass(frozen=True)
class Bar:
    state: str
    x: float
    width: float
    title: str
    start: float
    end: float
    open: bool


@dataclass(frozen=True)
class Row:
    worker_id: str
    type: str
    y: float
    state: str  # the state it is in at the window's end (or was last in)
    bars: Sequence[Bar]


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: float
    height: float
    label_w: float
    plot_w: float
    axis_y: float
    rows: Sequence[Row]
    ticks: Sequence[Tick]


def _title(state: str, start: float, end: float, reason: str, is_open: bool) -> str:
    until = "now" if is_open else hms(end)
    text = f"{state} {hms(start)}–{until} UTC ({duration(end - start)})"
    return f"{text}: {reason}" if reason else text


def chart(lanes: Sequence[Lane], start: float, end: float) -> Chart:
    """Place each lane on its own row and each segment by its times within [start, end]."""
    rows = []
    for i, lane in enumerate(lanes):
        bars = []
        for seg in lane.segments:
            x0 = fraction(seg.start, start, end) * PLOT_W
            x1 = fraction(seg.end, start, end) * PLOT_W
            bars.append(
                Bar(
                    seg.state,
                    round(LABEL_W + x0, 2),
                    round(max(MIN_W, x1 - x0), 2),
                    _title(seg.state, seg.start, seg.end, seg.reason, seg.open),
                    seg.start,
                    seg.end,
                    seg.open,
                )
            )
        rows.append(Row(lane.worker_id, lane.type, i * LANE_H, lane.segments[-1].state, bars))
    tick_s = next((t for t in TICKS_S if (end - start) / t <= MAX_TICKS), TICKS_S[-1])
    ticks: list[Tick] = []
    at = math.ceil(start / tick_s) * tick_s
    while at <= end and len(ticks) <= MAX_TICKS:
        ticks.append(Tick(round(LABEL_W + fraction(at, start, end) * PLOT_W, 2), hms(at)[:5]))
        at += tick_s
    axis_y = len(rows) * LANE_H + 4
    return Chart(LABEL_W + PLOT_W, axis_y + AXIS_H, LABEL_W, PLOT_W, axis_y, rows, ticks)


def svg(c: Chart, label: str) -> Markup:
    """The chart as inline SVG: a `g.lane` per worker (data-worker, data-state: its state now, data-type)
    holding a `rect.seg` per segment (data-state, data-start, data-end; the hover text as its <title>).
    Written here rather than in a template: a page of a hundred lanes renders in a tenth of the time."""
    out = [
        f'<svg class="timeline" viewBox="0 0 {c.width:g} {c.height:g}" width="100%" role="img" '
        f'aria-label="{escape(label)}">'
    ]
    out.extend(f'<line class="tick" x1="{t.x:g}" x2="{t.x:g}" y1="0" y2="{c.axis_y:g}"/>' for t in c.ticks)
    for row in c.rows:
        worker = escape(row.worker_id)
        kind = f" · {escape(row.type.lower())}" if row.type else ""
        out.append(
            f'<g class="lane" data-worker="{worker}" data-state="{escape(row.state)}" '
            f'data-type="{escape(row.type)}" transform="translate(0 {row.y:g})">'
            f'<text class="lane-label" x="4" y="14">{worker}{kind}'
            f"<title>{worker}: {escape(row.state)} now</title></text>"
            f'<rect class="lane-bg" x="{c.label_w:g}" y="2" width="{c.plot_w:g}" height="16"/>'
        )
        for bar in row.bars:
            state = escape(bar.state)
            out.append(
                f'<rect class="seg seg-{state.lower()}{" open" if bar.open else ""}" data-state="{state}" '
                f'data-start="{bar.start!r}" data-end="{bar.end!r}" x="{bar.x:g}" y="3" '
                f'width="{bar.width:g}" height="14"><title>{escape(bar.title)}</title></rect>'
            )
        out.append("</g>")
    out.extend(
        f'<text class="tick-label" x="{t.x:g}" y="{c.axis_y + 14:g}">{escape(t.label)}</text>'
        for t in c.ticks
    )
    out.append("</svg>")
    return Markup("".join(out))
