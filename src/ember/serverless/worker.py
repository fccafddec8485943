"""The production worker loop: take jobs, run them in slots, post results, ping, honour job-stop.

Threads: the caller's thread runs the take loop (long-polls job-take the moment a slot is free). With
one slot (no `concurrency_modifier`) a job runs on that same thread; otherwise each job taken runs on
a thread of its own. Background threads (`background`) ping, poll job-stop and post progress updates.
The first ping waits until the jobs of the first job-take are served or started (at most
FIRST_PING_WAIT_S): a cold start's first job is not held up by a ping contending with it for the
interpreter and for the server (which, on a worker's first ping, also marks it ready and wakes its
lifecycle loop). The held jobs and the concurrency live in `slots`.

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

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from ember.serverless import env as urls
from ember.serverless import log, wire
from ember.serverless.background import POLL_TIMEOUT_S, ProgressSender, ping_loop, spawn, stop_loop
from ember.serverless.config import WorkerConfig
from ember.serverless.execute import AsyncBridge, Identity, JobCancelled, JobRun, execute, looks_async
from ember.serverless.slots import Slots
from ember.serverless.transport import HttpTransport, TransportFailure
from ember.serverless.wire import Job, JobResult

__all__ = ["Worker", "WorkerConfig"]

BACKOFF_START_S = 0.1
BACKOFF_CAP_S = 5.0
STREAM_RETRY_S = 10.0


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
        self.slots = Slots(on_first_job)  # on_first_job: called once, when the first job is held
        # One slot: jobs run on the take loop's thread, one after another (no thread per job).
        self._inline = config.concurrency_modifier is None
        self._stopping = threading.Event()
        self._done = threading.Event()  # drained: background loops end, so in-process workers leak nothing
        self._took = threading.Event()  # the first take's jobs are served or started: pings may start
        self._signals = 0
        self._progress = ProgressSender(env, transport)

    # ---- public ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until shut down; returns the process exit code (0 after a clean drain)."""
        if looks_async(self.config.handler):
            self.bridge.ensure_started()
        spawn(
            lambda: ping_loop(
                self.env,
                self.transport,
                self.slots,
                version=self.version,
                first_take=self._took,
                done=self._done,
            ),
            "ember-ping",
        )
        spawn(self._progress.run, "ember-progress")
        if urls.stop_url(self.env.take_template or "", self.env.worker_id) is None:
            log.warn("job_stop_disabled", reason="RUNPOD_WEBHOOK_GET_JOB has no /job-take/ segment")
        else:
            spawn(lambda: stop_loop(self.env, self.transport, self.slots, self._done), "ember-stop")
        log.info("worker_started", worker_id=self.env.worker_id)
        while not self._stopping.is_set():
            try:
                self._take_loop()
            except Exception as exc:  # a bug here must not kill a worker holding jobs
                log.error("take_loop_crashed", error=repr(exc))
                self._stopping.wait(BACKOFF_CAP_S)
        self.slots.wait_until_empty()
        self._done.set()
        self._progress.close()
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
        log.info("shutdown_requested", reason=reason, held=self.slots.count())
        self._stopping.set()
        self.slots.wake()
        if from_signal:
            self.transport.abort_polls()

    def stop_now(self, reason: str) -> None:
        """`request_shutdown` that also cuts the in-flight take poll (for a host stopping the worker)."""
        self.request_shutdown(reason)
        self.transport.abort_polls()

    def progress(self, job: Mapping[str, object], value: object) -> None:
        """Queue a progress update for a held job; updates for unknown or finished jobs are dropped."""
        job_id = job.get("id") if isinstance(job, dict) else None
        run = self.slots.get(job_id) if isinstance(job_id, str) else None
        if run is None:
            log.warn("progress_for_unknown_job", job_id=job_id)
            return
        self._progress.put(run, value)

    def held_job_ids(self) -> list[str]:
        return self.slots.ids()

    # ---- take loop ------------------------------------------------------------------------------

    def _take_loop(self) -> None:
        backoff_s = BACKOFF_START_S
        fast_empty = 0
        while not self._stopping.is_set():
            free = self._free_slots()
            if free <= 0:
                continue
            holding = self.slots.holding()
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
            runs = self.slots.hold(answer.jobs)
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
        desired = self.slots.concurrency
        if self.config.concurrency_modifier is not None:
            try:
                desired = self.config.wanted_concurrency(desired)
            except Exception as exc:
                log.error("concurrency_modifier_failed", error=repr(exc))
        return self.slots.free(desired)

    def _start_serving(self, run: JobRun) -> None:
        spawn(lambda: self._serve([run]), f"ember-job-{run.job_id[:32]}")

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
        return self.slots.hold(jobs, finished=run)

    def _finish(self, run: JobRun) -> list[Job]:
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

    def _slots_to_take(self, result: JobResult) -> int:
        """How many jobs to ask for with this result: 1 while its slot stays in use, else 0.

        0 while stopping, while a concurrency change waits for slots to drain, after a result that
        asks for this worker to be recycled, or while more jobs are held than there are slots.
        """
        if self._stopping.is_set() or result.get("stopPod") or not self.slots.keeps_slot():
            return 0
        return 1

    def _post_final(self, run: JobRun, result: JobResult, is_stream: bool) -> list[Job]:
        """POST the final result; returns the jobs an Ember server piggy-backed on its answer."""
        if not self.env.done_template:
            log.error("job_done_url_missing", job_id=run.job_id)
            return []
        url = urls.result_url(self.env.done_template, self.env.worker_id, run.job_id, is_stream=is_stream)
        take = self._slots_to_take(result)

        def retrying(detail: str, delay_s: float) -> None:
            log.warn("job_done_retry", job_id=run.job_id, error=detail, retry_in_s=round(delay_s, 2))

        def sent() -> None:
            # Logged once the result is on its way: the server records it while this line is written,
            # and an answer that brings the next job (`take`) is not held up by it.
            log.info("job_done", job_id=run.job_id, failed=bool(result.get("error")) or None)

        with run.post_lock:
            run.finished = True
            delivery = self.transport.post_result(
                url,
                wire.encode_body(result),
                first_url=urls.with_take(url, take) if take else None,
                on_retry=retrying,
                on_sent=sent,
            )
        if not delivery.delivered:
            log.error("job_done_not_delivered", job_id=run.job_id, detail=delivery.detail)
        answer = delivery.first_answer
        if answer is None or not take:
            return []
        piggy_backed = wire.parse_done_response(answer.status, answer.content_type, answer.body)
        for problem in piggy_backed.problems:
            log.warn("job_done_take_problem", problem=problem)
        return piggy_backed.jobs

    def _post_chunk(self, job_id: str, chunk: object) -> None:
        if not self.env.stream_template:
            log.warn("job_stream_url_missing", job_id=job_id)
            return
        url = urls.result_url(self.env.stream_template, self.env.worker_id, job_id, is_stream=False)
        delivery = self.transport.post_result(
            url, wire.encode_body({"output": chunk}), retry_s=STREAM_RETRY_S
        )
        if not delivery.delivered:
            log.error("job_stream_not_delivered", job_id=job_id, detail=delivery.detail)
