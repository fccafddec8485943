"""A local worker's on-disk identity, `home/workers/<id>/meta.json` (what `observe`, `stop` and `exec`
know it by, here and in a restarted instance), and how an `exec` enters the worker it names."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NotRequired, TypedDict

from ember.backends.base import LaunchSpec
from ember.backends.procs import write_atomic
from ember.backends.sandbox import View, enter_argv, init_pid
from ember.backends.template_proc import Forked, enter_forked_argv
from ember.core.errors import BackendError


class SandboxMeta(TypedDict):
    """A sandboxed worker's uid and gid; `forked`: it has namespaces of its own under its template's."""

    uid: int | None
    gid: int | None
    forked: NotRequired[bool]


class TemplateMeta(TypedDict):
    """The template a forked worker was forked from."""

    key: str
    pid: int | None


class WorkerMeta(TypedDict):
    """What `meta.json` holds (written by `write_meta`)."""

    worker_id: str
    endpoint_id: str
    account_id: str
    release: int
    pid: int
    start_ticks: int | None
    started_at: float
    cwd: str
    argv: list[str]
    sandbox: SandboxMeta | None
    template: TemplateMeta | None


def write_meta(
    worker_dir: Path,
    spec: LaunchSpec,
    pid: int,
    start_ticks: int | None,
    cwd: str,
    argv: list[str],
    view: View | None,
    forked: Forked | None,
) -> None:
    """Record a started worker: its pid (and start time, against pid reuse), where it runs, its sandbox
    (uid, gid; `forked`: namespaces of its own under its template's sandbox) and its template."""
    box: SandboxMeta | None = None if view is None else {"uid": view.uid, "gid": view.gid}
    if box is not None and forked is not None:
        box["forked"] = True
    meta: WorkerMeta = {
        "worker_id": spec.worker_id,
        "endpoint_id": spec.endpoint_id,
        "account_id": spec.account_id,
        "release": spec.release,
        "pid": pid,
        "start_ticks": start_ticks,
        "started_at": time.time(),
        "cwd": view.cwd if view is not None else cwd,
        "argv": argv,
        "sandbox": box,
        "template": None if forked is None else {"key": forked.key, "pid": forked.template_pid},
    }
    write_atomic(worker_dir / "meta.json", json.dumps(meta))


def enter_worker_argv(meta: WorkerMeta, command: list[str]) -> tuple[list[str], str]:
    """(argv, cwd) that run `command` where the worker runs: its directory, and for a sandboxed worker
    its namespaces and uid (see `sandbox.enter_argv`, and `template_proc.enter_forked_argv` for a
    worker forked from a template). BackendError when its sandbox is gone."""
    cwd, box = meta["cwd"], meta.get("sandbox")
    if box is None:
        return command, cwd
    view = View((), cwd=cwd, uid=box["uid"], gid=box["gid"])
    if box.get("forked"):
        return enter_forked_argv(meta["pid"], view, command), "/"
    init = init_pid(meta["pid"])
    if init is None:
        raise BackendError(f"worker {meta['worker_id']!r} is not running (no sandbox found)")
    return enter_argv(init, view, command), "/"
