"""Local test mode: `python handler.py --test_input '{"input": …}'` or `./test_input.json`, no server.

Prints JSON lines on stdout: one `{"stream": chunk}` per generator chunk (RunPod does not iterate
generators; Ember does), `{"progress": value}` per progress update, and last the job-done body.
Exit code 0 on success, 1 when the job failed or its input was unusable (message on stderr).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from ember.serverless.execute import AsyncBridge, Identity, JobCancelled, JobRun, execute
from ember.serverless.wire import Job, Json, is_job
from ember.serverless.worker import WorkerConfig

TEST_INPUT_FILE = "test_input.json"
LOCAL_JOB_ID = "local_test"


@dataclass(frozen=True)
class LocalArgs:
    test_input: str | None = None
    serve_api: bool = False


def parse_args(argv: list[str]) -> LocalArgs:
    """Find `--test_input JSON` (or `--test_input=JSON`) and `--rp_serve_api`; other flags are left alone."""
    test_input = None
    serve_api = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--test_input" and i + 1 < len(argv):
            test_input = argv[i + 1]
            i += 1
        elif arg.startswith("--test_input="):
            test_input = arg.split("=", 1)[1]
        elif arg == "--rp_serve_api":
            serve_api = True
        i += 1
    return LocalArgs(test_input=test_input, serve_api=serve_api)


def load_job(test_input: str | None, cwd: str) -> tuple[Job | None, str]:
    """The local job from the flag or from `test_input.json` in `cwd`; (None, why) when unusable."""
    if test_input is None:
        path = os.path.join(cwd, TEST_INPUT_FILE)
        if not os.path.isfile(path):
            return None, f"{TEST_INPUT_FILE} not found in {cwd} and no --test_input given; exiting"
        try:
            with open(path, encoding="utf-8") as fh:
                test_input = fh.read()
        except OSError as exc:
            return None, f"cannot read {path}: {exc}"
        source = path
    else:
        source = "--test_input"
    try:
        job: Json = json.loads(test_input)
    except ValueError as exc:
        return None, f"{source} is not valid JSON: {exc}"
    if not isinstance(job, dict):
        return None, f"{source} must be a JSON object with an 'input' key"
    if "input" not in job:
        return None, f"{source} has no 'input' key"
    job.setdefault("id", LOCAL_JOB_ID)
    if not is_job(job):  # it has an `input`: its `id` is what is wrong
        return None, f"{source}: 'id' must be a string"
    return job, source


class LocalSession:
    """Runs one job in this process and reports on the given streams."""

    def __init__(self, config: WorkerConfig, identity: Identity, out: TextIO, err: TextIO) -> None:
        self.config = config
        self.identity = identity
        self.out = out
        self.err = err
        self.bridge = AsyncBridge()

    def progress(self, job: Mapping[str, object], value: object) -> None:
        self._line({"progress": value})

    def run(self, job: Job) -> int:
        run = JobRun(job)
        try:
            result, _ = execute(
                self.config.handler,
                run,
                bridge=self.bridge,
                identity=self.identity,
                emit_chunk=lambda chunk: self._line({"stream": chunk}),
                aggregate=self.config.return_aggregate_stream,
            )
        except JobCancelled:
            self.err.write("error: the job was cancelled\n")
            return 1
        if self.config.refresh_worker:
            result["stopPod"] = True
        self._line(result)
        error = result.get("error")
        if error:
            self.err.write(f"error: job {job['id']} failed: {_readable(error)}\n")
            self.err.flush()
            return 1
        return 0

    def _line(self, body: Mapping[str, object]) -> None:
        try:
            text = json.dumps(body, ensure_ascii=False)
        except (TypeError, ValueError):
            text = json.dumps({key: repr(value) for key, value in body.items()}, ensure_ascii=False)
        self.out.write(text + "\n")
        self.out.flush()


def _readable(error: object) -> str:
    """Unpack a handler-exception payload into `Type: message` plus its traceback."""
    if isinstance(error, str):
        try:
            info = json.loads(error)
        except ValueError:
            return error
        if isinstance(info, dict) and "error_message" in info:
            return f"{info.get('error_type')}: {info['error_message']}\n{info.get('error_traceback', '')}"
    return str(error)
