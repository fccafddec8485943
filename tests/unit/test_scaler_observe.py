"""The scaler's Observation as the lifecycle builds it (`scaler.observe`) and the status line a
decision puts on the endpoint (`scaler.status_line`): pure, from explicit values and `now`."""

from __future__ import annotations

from ember.core.scaler import Observation, Reason, WorkerFacts, observe, status_line
from ember.core.workers import WorkerState

S = WorkerState
NOW = 1_700_000_000.0
RELEASE = 3


def worker(
    state: WorkerState,
    *,
    release: int = RELEASE,
    state_since: float = NOW - 100.0,
    idle_since: float | None = None,
    busy: bool = False,
    recycle: bool = False,
) -> WorkerFacts:
    return WorkerFacts(release, state, state_since, idle_since, busy, recycle)


def test_an_endpoint_without_workers_or_jobs_observes_nothing() -> None:
    assert observe(NOW, RELEASE, []) == Observation(now=NOW)


def test_queue_counts_pass_through_and_the_oldest_job_sets_the_wait() -> None:
    o = observe(NOW, RELEASE, [], queued=4, queued_low_priority=2, oldest_created_at=NOW - 7.5, in_progress=1)
    assert (o.queued, o.queued_low_priority, o.oldest_wait_s, o.in_progress) == (4, 2, 7.5, 1)


def test_no_queued_job_means_no_wait_and_a_clock_behind_the_job_never_gives_a_negative_one() -> None:
    assert observe(NOW, RELEASE, [], oldest_created_at=None).oldest_wait_s == 0.0
    assert observe(NOW, RELEASE, [], queued=1, oldest_created_at=NOW + 5).oldest_wait_s == 0.0


def test_only_current_release_workers_that_are_not_outdated_recycled_or_stopped_count() -> None:
    counted = [worker(S.INITIALIZING), worker(S.THROTTLED), worker(S.UNHEALTHY), worker(S.RUNNING, busy=True)]
    ignored = [
        worker(S.IDLE, release=RELEASE - 1),
        worker(S.OUTDATED, busy=True),
        worker(S.IDLE, recycle=True),
        worker(S.STOPPED),
    ]
    o = observe(NOW, RELEASE, counted + ignored)
    assert (o.workers, o.busy_workers, o.idle_workers) == (4, 1, ())


def test_idle_workers_give_when_they_went_idle_or_else_when_they_entered_their_state() -> None:
    o = observe(
        NOW,
        RELEASE,
        [
            worker(S.IDLE, idle_since=NOW - 3.0),
            worker(S.IDLE, idle_since=None, state_since=NOW - 9.0),
            worker(S.IDLE, idle_since=NOW - 1.0, busy=True),  # it holds a job: busy, not idle
        ],
    )
    assert (o.workers, o.busy_workers, o.idle_workers) == (3, 1, (NOW - 3.0, NOW - 9.0))


def test_the_status_line_names_an_exhausted_balance_and_the_account_limit_only() -> None:
    zero = status_line(Reason.ZERO_BALANCE, zero_balance=True, account_limit=5)
    assert zero == "account balance is exhausted: no new workers start until credit is added"
    capped = status_line(Reason.ACCOUNT_LIMIT, zero_balance=False, account_limit=5)
    assert capped == "limited by the account's maximum of 5 workers (balance tier)"
    assert status_line(Reason.HOLD, zero_balance=True, account_limit=5) is None
    assert status_line(Reason.ZERO_BALANCE, zero_balance=False, account_limit=5) is None
