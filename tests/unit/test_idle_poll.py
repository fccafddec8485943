"""How long the control plane polls after an answer (`core.idle_poll.next_window`): it grows while the
next event keeps coming within the longest window, and shrinks to nothing when it comes later."""

from __future__ import annotations

import pytest

from ember.core.idle_poll import STEPS, next_window

LONGEST = 200e-6


def test_an_event_within_the_longest_window_doubles_the_window_up_to_the_longest() -> None:
    window = 0.0
    seen = []
    for _ in range(STEPS):
        window = next_window(window, 50e-6, LONGEST)
        seen.append(window)
    assert seen[0] == pytest.approx(LONGEST / STEPS)  # from none, the first step
    assert seen[1] == pytest.approx(2 * LONGEST / STEPS)
    assert seen[-1] == LONGEST and max(seen) == LONGEST
    # An event just inside the longest window counts as caught (a longer poll would have caught it).
    assert next_window(LONGEST / STEPS, LONGEST, LONGEST) == pytest.approx(2 * LONGEST / STEPS)


def test_an_event_after_the_longest_window_halves_the_window_down_to_none() -> None:
    window = LONGEST
    seen = []
    for _ in range(STEPS):
        window = next_window(window, 1.0, LONGEST)
        seen.append(window)
    assert seen[0] == pytest.approx(LONGEST / 2)
    assert seen[1] == pytest.approx(LONGEST / 4)
    assert seen[3] == 0.0  # below the first step: no polling at all
    assert seen[-1] == 0.0
    # Polling starts again once events come soon after answers.
    assert next_window(0.0, 10e-6, LONGEST) == pytest.approx(LONGEST / STEPS)


def test_a_longest_window_of_zero_never_polls() -> None:
    assert next_window(0.0, 0.0, 0.0) == 0.0
    assert next_window(LONGEST, 10e-6, 0.0) == 0.0
