"""The worker's background threads: pings, the job-stop poll, and progress updates.

Each runs on a daemon thread started with `spawn` and ends once the worker has drained (`done` set, or
`ProgressSender.close()`). None of them takes or finishes jobs; that is the take loop's (`worker`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from ember.serverless import env as urls
from ember.serverless import log, wire
from ember.serverless.execute import JobRun
from ember.serverless.slots import Slots
from ember.serverless.transport import HttpTransport, TransportFailure

POLL_TIMEOUT_S = 90.0
PROGRESS_RETRY_S = 5.0
FIRST_PING_WAIT_S = 1.0


def spawn(target: Callable[[], None], name: str) -> None:
    """Run `target` on a daemon thread named `name`; an exception that ends it is logged."""

    def guarded() -> None:
        try:
            target()
        except Exception as exc:
            log.error("thread_crashed", thread=name, error=repr(exc))

    threading.Thread(target=guarded, name=name, daemon=True).start()


class ProgressSender:
    """Posts progress updates of held jobs in order, on one thread; `put` never blocks."""

    def __init__(self, env: urls.WorkerEnv, transport: HttpTransport) -> None:
        self.env = env
        self.transport = transport
        self._queue: queue.SimpleQueue[tuple[JobRun, object] | None] = queue.SimpleQueue()

    def put(self, run: JobRun, value: object) -> None:
        self._queue.put((run, value))

    def close(self) -> None:
        """End `run` once the updates queued before this are handled."""
        self._queue.put(None)

    def run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            run, value = item
            if not self.env.done_template:
                continue
            url = urls.result_url(self.env.done_template, self.env.worker_id, run.job_id, is_stream=False)
            body = wire.encode_body({"status": "IN_PROGRESS", "output": value})
            with run.post_lock:
                if run.finished:
                    continue
                delivery = self.transport.post_result(url, body, retry_s=PROGRESS_RETRY_S)
            if not delivery.delivered:
                log.warn("progress_not_delivered", job_id=run.job_id, detail=delivery.detail)


def ping_loop(
    env: urls.WorkerEnv,
    transport: HttpTransport,
    slots: Slots,
    *,
    version: str,
    first_take: threading.Event,
    done: threading.Event,
) -> None:
    """Ping every `env.ping_interval_s` with the held job ids, until `done`.

    The first ping waits until `first_take` (the jobs of the first job-take are served or started), at
    most FIRST_PING_WAIT_S: a cold start's first job is not held up by a ping contending with it.
    """
    if not env.pings_enabled:
        log.warn("pings_disabled", reason="needs RUNPOD_AI_API_KEY, RUNPOD_POD_ID and RUNPOD_WEBHOOK_PING")
        return
    first_take.wait(FIRST_PING_WAIT_S)
    while True:
        url = urls.ping_url(env.ping_template or "", env.worker_id, slots.ids(), version=version)
        try:
            resp = transport.request("GET", url, timeout_s=max(2.0, 2 * env.ping_interval_s))
            if resp.status >= 400:
                log.warn("ping_rejected", status=resp.status)
        except TransportFailure as exc:
            log.warn("ping_failed", error=exc)
        if done.wait(env.ping_interval_s):
            return


def stop_loop(env: urls.WorkerEnv, transport: HttpTransport, slots: Slots, done: threading.Event) -> None:
    """While jobs are held, long-poll job-stop and cancel the jobs it names, until `done`."""
    stop = urls.stop_url(env.take_template or "", env.worker_id) or ""
    while not done.is_set():
        slots.wait_for_jobs(done)
        if done.is_set():
            return
        began = time.monotonic()
        pause_s = 0.0
        try:
            resp = transport.request("GET", stop, timeout_s=POLL_TIMEOUT_S, abortable=True)
        except TransportFailure as exc:
            log.debug("job_stop_failed", error=exc)
            pause_s = 1.0
        else:
            if resp.status == 429:
                pause_s = 5.0
            elif resp.status >= 400:
                log.debug("job_stop_rejected", status=resp.status)
                pause_s = 1.0
            ids = wire.parse_stop_response(resp.status, resp.content_type, resp.body)
            _stop_jobs(slots, ids)
            if not ids and pause_s == 0.0:
                pause_s = max(0.0, 1.0 - (time.monotonic() - began))
        if pause_s:
            time.sleep(pause_s)


def _stop_jobs(slots: Slots, job_ids: list[str]) -> None:
    for job_id in job_ids:
        run = slots.get(job_id)
        if run is None:
            log.debug("job_stop_unknown", job_id=job_id)
            continue
        interrupted = run.cancel()
        log.info(
            "job_stop_requested",
            job_id=job_id,
            interrupted=interrupted or None,
            note=None if interrupted else "sync; result dropped",
        )
