"""Restart backoff: 10 s doubling, capped at an hour, one attempt per step, giving up after 7 days."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.core.backoff import GIVE_UP_AFTER_S, MAX_DELAY_S, Backoff, delay_s, give_up, next_attempt_at

T0 = 1_700_000_000.0
DAY_S = 24 * 3600.0


@pytest.mark.parametrize(
    ("failures", "delay"),
    [
        (0, 0.0),
        (1, 10.0),
        (2, 20.0),
        (3, 40.0),
        (4, 80.0),
        (9, 2560.0),
        (10, 3600.0),
        (11, 3600.0),
        (10**6, 3600.0),
    ],
)
def test_delay_doubles_from_ten_seconds_up_to_an_hour(failures: int, delay: float) -> None:
    assert delay_s(failures) == delay


@given(st.integers(min_value=0, max_value=10**9))
def test_delay_never_falls_as_failures_grow_and_stays_capped(failures: int) -> None:
    assert delay_s(failures) <= delay_s(failures + 1) <= MAX_DELAY_S


def test_next_attempt_is_the_delay_after_the_last_failure() -> None:
    assert next_attempt_at(T0, 3) == T0 + 40.0


@pytest.mark.parametrize(
    ("elapsed_s", "gives_up"), [(0.0, False), (7 * DAY_S - 1, False), (7 * DAY_S, True), (30 * DAY_S, True)]
)
def test_give_up_after_seven_days_of_failures(elapsed_s: float, gives_up: bool) -> None:
    assert give_up(T0, T0 + elapsed_s) is gives_up


def test_give_up_needs_a_failure() -> None:
    assert give_up(None, T0) is False


def test_a_healthy_worker_has_nothing_due() -> None:
    assert Backoff().due(T0) is False
    assert Backoff().next_attempt_at() is None


def test_one_attempt_per_backoff_step() -> None:
    b = Backoff().record_failure(T0)
    assert b.next_attempt_at() == T0 + 10
    assert not b.due(T0 + 9.999)
    assert b.due(T0 + 10)
    b = b.record_attempt(T0 + 10)
    # However long it takes, a pending attempt is never doubled up.
    assert not b.due(T0 + 10_000)
    b = b.record_failure(T0 + 12)
    assert b.failures == 2 and b.first_failure_at == T0
    assert not b.due(T0 + 31.9)
    assert b.due(T0 + 32)


def test_success_clears_the_backoff() -> None:
    b = Backoff().record_failure(T0).record_failure(T0 + 10).record_success()
    assert b == Backoff()


def test_no_attempt_is_due_after_seven_days() -> None:
    b = Backoff().record_failure(T0)
    attempts = 0
    for _ in range(400):
        at = b.next_attempt_at()
        assert at is not None
        if b.exhausted(at):
            break
        assert b.due(at)
        b = b.record_attempt(at).record_failure(at + 1)
        attempts += 1
    else:
        pytest.fail("the backoff never gave up")
    assert b.last_failure_at is not None and b.last_failure_at - T0 < GIVE_UP_AFTER_S + MAX_DELAY_S + 1
    assert not b.due(T0 + GIVE_UP_AFTER_S)
    assert attempts > 150  # about 168 hourly attempts after the doubling steps
