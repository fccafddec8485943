"""The production worker loop: take jobs, run them in slots, post results, ping, honour job-stop.

Threads: the caller's thread runs the take loop (long-polls job-take the moment a slot is free). With
one slot (no `concurrency_modifier`) a job runs on that same thread; otherwise each job taken runs on
a thread of its own. Background threads ping, poll job-stop and post progress updates. The first ping
waits until the jobs of the first job-take are served or started (at most FIRST_PING_WAIT_S): a cold
start's first job is not held up by a ping contending with it for the interpreter and for the server
(which, on a worker's first ping, also marks it ready and wakes its lifecycle loop).

Piggy-backed next job (an Ember extension): a final result's first POST to job-done carries `take=1`
when the finished job's slot stays in use; an Ember server answers with up to that many jobs, which
run at once in that slot, on the same thread, without a job-take round trip. With none queued it holds
the answer like a job-take until one comes (a shutdown signal cuts that wait; the result is resent
without `take`). Servers that ignore `take` (RunPod, older Ember) answer as before, and the slot goes
back to the take loop.

Shutdown (signal or refresh_worker) stops taking (no `take` either), lets held jobs finish and report,
then returns.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ember.serverless import env as urls
from ember.serverless import log, wire
from ember.serverless.execute import AsyncBridge, Identity, JobCancelled, JobRun, execute, looks_async
from ember.serverless.transport import HttpTransport, TransportFailure

POLL_TIMEOUT_S = 90.0
BACKOFF_START_S = 0.1
BACKOFF_CAP_S = 5.0
STREAM_RETRY_S = 10.0
PROGRESS_RETRY_S = 5.0
WAIT_SLICE_S = 1.0
FIRST_PING_WAIT_S = 1.0


@dataclass(frozen=True)
class WorkerConfig:
    """The `start(config)` keys, validated."""

    handler: Callable[..., Any]
    concurrency_modifier: Callable[[int], int] | None = None
    return_aggregate_stream: bool = False
    refresh_worker: bool = False

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> WorkerConfig:
        if not isinstance(config, dict) or not callable(config.get("handler")):
            raise TypeError("start(config) needs a dict with a callable 'handler'")
        modifier = config.get("concurrency_modifier")
        if modifier is not None and not callable(modifier):
            raise TypeError("'concurrency_modifier' must be callable: current concurrency -> new one")
        return cls(
            handler=config["handler"],
            concurrency_modifier=modifier,
            return_aggregate_stream=bool(config.get("return_aggregate_stream", False)),
            refresh_worker=bool(config.get("refresh_worker", False)),
        )


class Worker:
    """One worker process's job loop against the control plane described by `env`."""

    def __init__(
        self,
        config: WorkerConfig,
        env: urls.WorkerEnv,
        transport: HttpTransport,
        *,
        version: str,
        on_first_job: Callable[[], None] | None = None,
    ) -> None:
        if not env.take_template:
            raise ValueError("RUNPOD_WEBHOOK_GET_JOB is not set")
        self.config = config
        self.env = env
        self.transport = transport
        self.version = version
        self.identity = Identity(env.hostname, env.worker_id, version)
        self.bridge = AsyncBridge()
        self._cond = threading.Condition()
        self._held: dict[str, JobRun] = {}
        self._concurrency = 1
        # One slot: jobs run on the take loop's thread, one after another (no thread per job).
        self._inline = config.concurrency_modifier is None
        # The modifier asked for another concurrency: slots drain (nothing piggy-backed) until it applies.
        self._resize_pending = False
        self._stopping = threading.Event()
        self._done = threading.Event()  # drained: background loops end, so in-process workers leak nothing
        self._took = threading.Event()  # the first take's jobs are served or started: pings may start
        self._signals = 0
        self._progress: queue.SimpleQueue[tuple[JobRun, Any] | None] = queue.SimpleQueue()
        self._on_first_job = on_first_job  # called once, when the first job is held (before it runs)

    # ---- public ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until shut down; returns the process exit code (0 after a clean drain)."""
        if looks_async(self.config.handler):
            self.bridge.ensure_started()
        self._spawn(self._ping_loop, "ember-ping")
        self._spawn(self._progress_loop, "ember-progress")
        if urls.stop_url(self.env.take_template or "", self.env.worker_id) is None:
            log.warn("job_stop_disabled", reason="RUNPOD_WEBHOOK_GET_JOB has no /job-take/ segment")
        else:
            self._spawn(self._stop_loop, "ember-stop")
        log.info("worker_started", worker_id=self.env.worker_id)
        while not self._stopping.is_set():
            try:
                self._take_loop()
            except Exception as exc:  # a bug here must not kill a worker holding jobs
                log.error("take_loop_crashed", error=repr(exc))
                self._stopping.wait(BACKOFF_CAP_S)
        with self._cond:
            while self._held:
                self._cond.wait(WAIT_SLICE_S)
        self._done.set()
        self._progress.put(None)
        self.bridge.close()
        log.info("worker_stopped", worker_id=self.env.worker_id)
        return 0

    def request_shutdown(self, reason: str, *, from_signal: bool = False) -> None:
        """Stop taking jobs; held jobs finish and report their results.

        A signal (SIGTERM, SIGINT) also cuts the in-flight take poll, as RunPod's SDK does, so that the
        worker takes no new job and exits as soon as its held jobs are done.
        """
        if from_signal:
            self._signals += 1
        log.info("shutdown_requested", reason=reason, held=len(self._held))
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if from_signal:
            self.transport.abort_polls()

    def stop_now(self, reason: str) -> None:
        """`request_shutdown` that also cuts the in-flight take poll (for a host stopping the worker)."""
        self.request_shutdown(reason)
        self.transport.abort_polls()

    def progress(self, job: dict[str, Any], value: Any) -> None:
        """Queue a progress update for a held job; updates for unknown or finished jobs are dropped."""
        job_id = job.get("id") if isinstance(job, dict) else None
        with self._cond:
            run = self._held.get(job_id) if isinstance(job_id, str) else None
        if run is None:
            log.warn("progress_for_unknown_job", job_id=job_id)
            return
        self._progress.put((run, value))

    def held_job_ids(self) -> list[str]:
        with self._cond:
            return list(self._held)

    # ---- take loop ------------------------------------------------------------------------------

    def _take_loop(self) -> None:
        backoff_s = BACKOFF_START_S
        fast_empty = 0
        while not self._stopping.is_set():
            free = self._free_slots()
            if free <= 0:
                continue
            with self._cond:
                holding = bool(self._held)
            url = urls.take_url(
                self.env.take_template or "", self.env.worker_id, free_slots=free, holding_jobs=holding
            )
            began = time.monotonic()
            try:
                resp = self.transport.request(
                    "GET", url, timeout_s=POLL_TIMEOUT_S, abortable=True, unless=self._stopping
                )
            except TransportFailure as exc:
                self._took.set()
                if self._stopping.is_set():
                    break
                log.warn("job_take_failed", error=exc, retry_in_s=round(backoff_s, 2))
                self._stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_CAP_S)
                continue
            answer = wire.parse_take_response(resp.status, resp.content_type, resp.body)
            for problem in answer.problems:
                log.warn("job_take_problem", problem=problem)
            runs = self._hold(answer.jobs)
            if self._inline:
                self._serve(runs)
            else:
                for run in runs:
                    self._start_serving(run)
            self._took.set()
            if answer.retry_after_s:
                self._stopping.wait(answer.retry_after_s)
            elif answer.failed:
                self._stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_CAP_S)
            else:
                backoff_s = BACKOFF_START_S
                # A server that answers "no job" at once instead of holding the poll would make this
                # loop spin; pace such answers (never when a job came, or when the poll was held).
                if not answer.jobs and time.monotonic() - began < 0.05:
                    fast_empty += 1
                    self._stopping.wait(min(0.05 * fast_empty, 1.0))
                else:
                    fast_empty = 0

    def _free_slots(self) -> int:
        """Apply the concurrency modifier, then return free slots; waits (one slice) when none."""
        desired = self._concurrency
        if self.config.concurrency_modifier is not None:
            try:
                desired = max(1, int(self.config.concurrency_modifier(self._concurrency)))
            except Exception as exc:
                log.error("concurrency_modifier_failed", error=repr(exc))
        with self._cond:
            self._resize_pending = desired != self._concurrency
            if self._resize_pending:
                if self._held:
                    self._cond.wait(WAIT_SLICE_S)
                    return 0
                log.info("concurrency_changed", old=self._concurrency, new=desired)
                self._concurrency = desired
                self._resize_pending = False
            free = self._concurrency - len(self._held)
            if free <= 0:
                self._cond.wait(WAIT_SLICE_S)
            return free

    def _hold(self, jobs: list[dict[str, Any]], finished: JobRun | None = None) -> list[JobRun]:
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

    def _start_serving(self, run: JobRun) -> None:
        self._spawn(lambda: self._serve([run]), f"ember-job-{run.job_id[:32]}")

    def _serve(self, runs: list[JobRun]) -> None:
        """Run held jobs on this thread, each followed by the jobs piggy-backed on its result.

        With one slot they run one after another (a server that sent more jobs than asked for is
        served in order); with several, every extra job gets a thread of its own.
        """
        pending = deque(runs)
        while pending:
            if not self._inline:
                while len(pending) > 1:
                    self._start_serving(pending.pop())
            pending.extend(self._run_job(pending.popleft()))

    # ---- one job --------------------------------------------------------------------------------

    def _run_job(self, run: JobRun) -> list[JobRun]:
        """Run one held job and report it; returns the jobs now held in its place (piggy-backed)."""
        try:
            jobs = self._finish(run)
        except BaseException as exc:
            log.error("job_crashed", job_id=run.job_id, error=repr(exc))
            jobs = []
        run.finished = True
        return self._hold(jobs, finished=run)

    def _finish(self, run: JobRun) -> list[dict[str, Any]]:
        job_id = run.job_id
        try:
            result, is_stream = execute(
                self.config.handler,
                run,
                bridge=self.bridge,
                identity=self.identity,
                emit_chunk=lambda chunk: self._post_chunk(job_id, chunk),
                aggregate=self.config.return_aggregate_stream,
            )
        except JobCancelled:
            log.info("job_stopped", job_id=job_id)
            return []
        if self.config.refresh_worker:
            result["stopPod"] = True
            self.request_shutdown("refresh_worker")
        if run.cancel_requested:
            log.info("job_stopped_result_dropped", job_id=job_id)
            return []
        return self._post_final(run, result, is_stream)

    def _slots_to_take(self, result: dict[str, Any]) -> int:
        """How many jobs to ask for with this result: 1 while its slot stays in use, else 0.

        0 while stopping, while a concurrency change waits for slots to drain, after a result that
        asks for this worker to be recycled, or while more jobs are held than there are slots.
        """
        if self._stopping.is_set() or self._resize_pending or result.get("stopPod"):
            return 0
        with self._cond:
            return 1 if len(self._held) - 1 < self._concurrency else 0

    def _post_final(self, run: JobRun, result: dict[str, Any], is_stream: bool) -> list[dict[str, Any]]:
        """POST the final result; returns the jobs an Ember server piggy-backed on its answer."""
        if not self.env.done_template:
            log.error("job_done_url_missing", job_id=run.job_id)
            return []
        url = urls.result_url(self.env.done_template, self.env.worker_id, run.job_id, is_stream=is_stream)
        take = self._slots_to_take(result)

        def retrying(detail: str, delay_s: float) -> None:
            log.warn("job_done_retry", job_id=run.job_id, error=detail, retry_in_s=round(delay_s, 2))

        with run.post_lock:
            run.finished = True
            delivery = self.transport.post_result(
                url,
                wire.encode_body(result),
                first_url=urls.with_take(url, take) if take else None,
                on_retry=retrying,
            )
        if delivery.delivered:
            log.info("job_done", job_id=run.job_id, failed=bool(result.get("error")) or None)
        else:
            log.error("job_done_not_delivered", job_id=run.job_id, detail=delivery.detail)
        answer = delivery.first_answer
        if answer is None or not take:
            return []
        piggy_backed = wire.parse_done_response(answer.status, answer.content_type, answer.body)
        for problem in piggy_backed.problems:
            log.warn("job_done_take_problem", problem=problem)
        return piggy_backed.jobs

    def _post_chunk(self, job_id: str, chunk: Any) -> None:
        if not self.env.stream_template:
            log.warn("job_stream_url_missing", job_id=job_id)
            return
        url = urls.result_url(self.env.stream_template, self.env.worker_id, job_id, is_stream=False)
        delivery = self.transport.post_result(
            url, wire.encode_body({"output": chunk}), retry_s=STREAM_RETRY_S
        )
        if not delivery.delivered:
            log.error("job_stream_not_delivered", job_id=job_id, detail=delivery.detail)

    # ---- background loops -----------------------------------------------------------------------

    def _progress_loop(self) -> None:
        while True:
            item = self._progress.get()
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

    def _ping_loop(self) -> None:
        if not self.env.pings_enabled:
            log.warn(
                "pings_disabled", reason="needs RUNPOD_AI_API_KEY, RUNPOD_POD_ID and RUNPOD_WEBHOOK_PING"
            )
            return
        self._took.wait(FIRST_PING_WAIT_S)
        while True:
            url = urls.ping_url(
                self.env.ping_template or "", self.env.worker_id, self.held_job_ids(), version=self.version
            )
            try:
                resp = self.transport.request("GET", url, timeout_s=max(2.0, 2 * self.env.ping_interval_s))
                if resp.status >= 400:
                    log.warn("ping_rejected", status=resp.status)
            except TransportFailure as exc:
                log.warn("ping_failed", error=exc)
            if self._done.wait(self.env.ping_interval_s):
                return

    def _stop_loop(self) -> None:
        stop = urls.stop_url(self.env.take_template or "", self.env.worker_id) or ""
        while not self._done.is_set():
            with self._cond:
                while not self._held and not self._done.is_set():
                    self._cond.wait(WAIT_SLICE_S)
            if self._done.is_set():
                return
            began = time.monotonic()
            pause_s = 0.0
            try:
                resp = self.transport.request("GET", stop, timeout_s=POLL_TIMEOUT_S, abortable=True)
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
                self._stop_jobs(ids)
                if not ids and pause_s == 0.0:
                    pause_s = max(0.0, 1.0 - (time.monotonic() - began))
            if pause_s:
                time.sleep(pause_s)

    def _stop_jobs(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            with self._cond:
                run = self._held.get(job_id)
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

    @staticmethod
    def _spawn(target: Callable[[], None], name: str) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception as exc:
                log.error("thread_crashed", thread=name, error=repr(exc))

        threading.Thread(target=guarded, name=name, daemon=True).start()
