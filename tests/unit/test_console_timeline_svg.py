"""The timeline's drawing: segments placed by time, hover texts, ticks that fit, and every text escaped
(a worker's reason may quote a handler's error)."""

from __future__ import annotations

import re

from ember.console.timeline_svg import LABEL_W, PLOT_W, chart, duration, svg
from ember.core.timeline import Lane, Segment

START, END = 1_800_000_000.0, 1_800_003_600.0


def lane(*segments: Segment, worker_id: str = "wk-1") -> Lane:
    return Lane(worker_id, "FLEX", segments)


def test_segments_are_placed_by_time_and_a_short_one_stays_visible() -> None:
    c = chart(
        [
            lane(
                Segment("IDLE", START, START + 1800, "ready"),
                Segment("RUNNING", START + 1800, START + 1800, ""),
            )
        ],
        START,
        END,
    )
    idle, running = c.rows[0].bars
    assert (idle.x, idle.width) == (LABEL_W, PLOT_W / 2)
    assert running.x == LABEL_W + PLOT_W / 2 and running.width > 0
    assert idle.title == "IDLE 08:00:00–08:30:00 UTC (30 min 0 s): ready"


def test_an_open_segment_says_it_lasts_until_now() -> None:
    c = chart([lane(Segment("IDLE", START, END, "", open=True))], START, END)
    assert c.rows[0].bars[0].title == "IDLE 08:00:00–now UTC (1 h 0 min)"
    assert c.rows[0].state == "IDLE"


def test_ticks_fit_the_span() -> None:
    assert len(chart([], START, END).ticks) == 7  # every 10 minutes, both ends included
    assert [t.label for t in chart([], START, START + 300).ticks] == [
        "08:00",
        "08:01",
        "08:02",
        "08:03",
        "08:04",
        "08:05",
    ]


def test_every_text_in_the_svg_is_escaped() -> None:
    hostile = '<script>alert("x")</script>'
    c = chart([lane(Segment("UNHEALTHY", START, END, hostile), worker_id='wk-"1"')], START, END)
    out = str(svg(c, "Worker states & <more>"))
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert 'data-worker="wk-&#34;1&#34;"' in out
    assert 'aria-label="Worker states &amp; &lt;more&gt;"' in out
    assert re.findall(r'<rect class="seg [^"]*" data-state="(\w+)"', out) == ["UNHEALTHY"]


def test_durations_read_as_people_say_them() -> None:
    assert [duration(s) for s in (None, 0.42, 6.24, 184, 3720)] == [
        "–",
        "420 ms",
        "6.2 s",
        "3 min 4 s",
        "1 h 2 min",
    ]
