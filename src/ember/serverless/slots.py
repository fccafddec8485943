"""The jobs a worker holds and how many it may hold (its concurrency), behind one condition variable.

The take loop, the job threads, the pings and the job-stop poller all read or change this state; this
module is its only owner. It does no I/O and starts no thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ember.serverless import log
from ember.serverless.execute import JobRun
from ember.serverless.wire import Job

WAIT_SLICE_S = 1.0


class Slots:
    """Held jobs by id and the concurrency; waits are cut into slices of WAIT_SLICE_S."""

    def __init__(self, on_first_job: Callable[[], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._held: dict[str, JobRun] = {}
        self._concurrency = 1
        # The modifier asked for another concurrency: slots drain (nothing piggy-backed) until it applies.
        self.resize_pending = False
        self._on_first_job = on_first_job  # called once, when the first job is held (before it runs)

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def free(self, desired: int) -> int:
        """Apply the `desired` concurrency (once no job is held), then return the free slots; waits one
        slice when there are none."""
        with self._cond:
            self.resize_pending = desired != self._concurrency
            if self.resize_pending:
                if self._held:
                    self._cond.wait(WAIT_SLICE_S)
                    return 0
                log.info("concurrency_changed", old=self._concurrency, new=desired)
                self._concurrency = desired
                self.resize_pending = False
            free = self._concurrency - len(self._held)
            if free <= 0:
                self._cond.wait(WAIT_SLICE_S)
            return free

    def hold(self, jobs: list[Job], finished: JobRun | None = None) -> list[JobRun]:
        """Count `jobs` as held (the ping reports them), releasing `finished` in the same step, so a
        piggy-backed job takes over its slot without the take loop ever seeing it free."""
        runs: list[JobRun] = []
        with self._cond:
            if finished is not None:
                self._held.pop(finished.job_id, None)
            for job in jobs:
                run = JobRun(job)
                if run.job_id in self._held:
                    log.warn("job_already_held", job_id=run.job_id)
                    continue
                self._held[run.job_id] = run
                runs.append(run)
            if finished is not None and not runs:
                self._cond.notify_all()  # a slot is free (or the last held job is done)
            hook, self._on_first_job = (self._on_first_job, None) if runs else (None, self._on_first_job)
        for run in runs:
            log.debug("job_taken", job_id=run.job_id, piggy_backed=finished is not None or None)
        if hook is not None:
            try:
                hook()
            except Exception as exc:
                log.warn("first_job_hook_failed", error=repr(exc))
        return runs

    def keeps_slot(self) -> bool:
        """Whether a job finishing now leaves its slot in use for a next one: not while a concurrency
        change waits for slots to drain, nor while more jobs are held than there are slots."""
        if self.resize_pending:
            return False
        with self._cond:
            return len(self._held) - 1 < self._concurrency

    def get(self, job_id: str) -> JobRun | None:
        with self._cond:
            return self._held.get(job_id)

    def ids(self) -> list[str]:
        with self._cond:
            return list(self._held)

    def holding(self) -> bool:
        with self._cond:
            return bool(self._held)

    def count(self) -> int:
        """How many jobs are held, read without the lock (for logs)."""
        return len(self._held)

    def wake(self) -> None:
        """End every wait in progress early (the worker is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def wait_until_empty(self) -> None:
        with self._cond:
            while self._held:
                self._cond.wait(WAIT_SLICE_S)

    def wait_for_jobs(self, done: threading.Event) -> None:
        """Return once a job is held, or once `done` is set."""
        with self._cond:
            while not self._held and not done.is_set():
                self._cond.wait(WAIT_SLICE_S)
