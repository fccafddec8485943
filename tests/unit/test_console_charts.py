"""The billing chart's geometry: days as bars, series stacked largest first, heights in proportion to
cost against a round axis maximum, hover titles with the exact amounts."""

from __future__ import annotations

import pytest

from ember.console.charts import HEIGHT, TOP, day_text, nice_ceiling, short_dollars, stacked_bars

DAY0 = 20_000  # 2024-10-04


@pytest.mark.parametrize(
    ("micros", "ceiling"),
    [
        (0, 1),
        (1, 1),
        (3, 5),
        (7, 10),
        (10, 10),
        (11, 20),
        (1300, 2000),
        (2001, 5000),
        (60_000_000, 100_000_000),
    ],
)
def test_the_axis_maximum_is_1_2_or_5_times_a_power_of_ten(micros: int, ceiling: int) -> None:
    assert nice_ceiling(micros) == ceiling


def test_axis_labels_keep_the_decimals_an_amount_needs() -> None:
    assert short_dollars(0) == "$0.00"
    assert short_dollars(1_500_000) == "$1.50"
    assert short_dollars(1000) == "$0.001"
    assert short_dollars(5) == "$0.000005"


def test_bars_stack_series_largest_first_in_proportion_to_cost() -> None:
    days = [DAY0, DAY0 + 1, DAY0 + 2]
    values = {
        ("usage:ep-small", DAY0): (10, 100_000),
        ("usage:ep-big", DAY0): (30, 300_000),
        ("usage:ep-big", DAY0 + 2): (50, 500_000),
    }
    chart = stacked_bars(days, values, {"usage:ep-big": "big", "usage:ep-small": "small"})
    assert [(s.label, s.seconds, s.micros, s.cost) for s in chart.series] == [
        ("big", 80, 800_000, "$0.800000"),
        ("small", 10, 100_000, "$0.100000"),
    ]
    assert chart.series[0].color != chart.series[1].color
    assert chart.total == "$0.900000"
    first_day = [s for s in chart.segments if s.day == day_text(DAY0)]
    assert [s.series for s in first_day] == ["usage:ep-big", "usage:ep-small"]
    big, small = first_day
    bottom = HEIGHT - 28
    assert big.y + big.height == pytest.approx(bottom)  # the largest series sits on the axis
    assert small.y + small.height == pytest.approx(big.y)  # the next on top of it
    assert big.height == pytest.approx(3 * small.height)
    third = [s for s in chart.segments if s.day == day_text(DAY0 + 2)]
    assert third[0].y == pytest.approx(TOP)  # $0.50 of a $0.50 axis: the full height
    assert not [s for s in chart.segments if s.day == day_text(DAY0 + 1)]  # nothing billed: no bar
    assert third[0].title == f"big · {day_text(DAY0 + 2)} · $0.500000 · 50 s"
    assert [label.text for label in chart.y_labels] == ["$0.00", "$0.25", "$0.50"]
    assert [label.text for label in chart.x_labels] == ["10-04", "10-05", "10-06"]


def test_a_month_of_days_labels_every_third_day_and_the_last() -> None:
    chart = stacked_bars(list(range(DAY0, DAY0 + 30)), {}, {})
    assert len(chart.x_labels) == 11 and chart.x_labels[-1].text == day_text(DAY0 + 29)[5:]
    assert chart.segments == [] and chart.series == [] and chart.total == "$0.000000"
