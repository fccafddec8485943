"""`ember deploy --wait`: follow the new release's first worker until it is ready or has failed, printing
its state and reason as they change ("installing requirements", "starting handler") and its log lines as
they are written; on a terminal a spinner under them shows the current state and the time waited. A git
release is built first: its build is followed (`follow.follow_build`), then its worker."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import typer
from rich.status import Status

from ember.cli.answers import EndpointRecord, ReleaseLine
from ember.cli.follow import follow_builds
from ember.cli.http import api_key, api_url, call
from ember.cli.output import console, is_terminal

POLL_S = 0.5
READY = frozenset({"IDLE", "RUNNING"})
FAILED = frozenset({"UNHEALTHY", "STOPPED", "OUTDATED"})


def _say(line: str, *, error: bool = False) -> None:
    """One line above the spinner on a terminal, else a plain line (errors on stderr)."""
    if error or not is_terminal():
        typer.echo(line, err=error)
    else:
        console.print(line, markup=False, highlight=False)


class _LogFollower:
    """Prints one worker's log lines (from its first) on a daemon thread until closed."""

    def __init__(self, endpoint_id: str, worker_id: str) -> None:
        self._client = httpx.Client(headers={"Authorization": f"Bearer {api_key()}"}, timeout=None)
        self._url = f"{api_url()}/v1/endpoints/{endpoint_id}/logs"
        self._params = {"worker": worker_id, "follow": "true"}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"logs-{worker_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._client.stream("GET", self._url, params=self._params) as resp:
                if resp.status_code >= 400:
                    return
                for line in resp.iter_lines():
                    if self._closed.is_set():
                        return
                    _say(line)
        except (httpx.HTTPError, RuntimeError):
            return  # closed under us, or the server went away: the state poll reports what matters

    def close(self, drain_s: float) -> None:
        """Let lines already on their way print (up to `drain_s`), then stop following."""
        self._thread.join(drain_s)
        self._closed.set()
        with contextlib.suppress(Exception):
            self._client.close()


def wait_for_worker(record: EndpointRecord, timeout_s: float) -> None:
    """Follow the endpoint's worker of `record`'s release until it is ready (returns) or fails, or
    `timeout_s` passes (typer.Exit(1) with the reason either way). A git endpoint's builds in progress
    are followed first."""
    deadline = time.monotonic() + timeout_s
    if record.get("git"):
        built = follow_builds(record["id"], _new_releases(record), deadline=deadline)
        if built == "FAILED":
            _say(f"the build failed: see `ember releases {record['name']}`", error=True)
            raise typer.Exit(1)
        record = call("GET", f"/v1/endpoints/{record['id']}")
        if built is None and not record["release"]:
            _say(f"no release of {record['name']} is built yet (see `ember releases {record['name']}`)")
            return
    status = console.status("waiting for a worker", spinner="dots") if is_terminal() else None
    if status is not None:
        status.start()
    try:
        _wait(record, deadline, timeout_s, status)
    finally:
        if status is not None:
            status.stop()


def _new_releases(record: EndpointRecord) -> list[int]:
    """The releases the deploy of `record` made, built or not yet: made no earlier than the record was
    written, and newer than the release it serves (a build that already ended is shown all the same)."""
    since = record.get("updatedAt") or record.get("createdAt") or ""
    rows: list[ReleaseLine] = call("GET", f"/v1/endpoints/{record['id']}/releases")
    return sorted(r["release"] for r in rows if r["release"] > record["release"] and r["createdAt"] >= since)


def _wait(record: EndpointRecord, deadline: float, timeout_s: float, status: Status | None) -> None:
    endpoint_id, release, name = record["id"], record["release"], record["name"]
    started = time.monotonic()
    follower: _LogFollower | None = None
    worker_id: str | None = None
    shown: tuple[str, str] | None = None
    try:
        while time.monotonic() < deadline:
            rows = call("GET", f"/v1/endpoints/{endpoint_id}/workers")
            mine = [w for w in rows if w["release"] == release]
            if worker_id is None:
                ready = [w for w in mine if w["state"] in READY]
                if ready:
                    _say(f"worker {ready[0]['id']} is ready ({ready[0]['state']})")
                    return
                if not mine and record.get("workersMin", 0) == 0:
                    _say(
                        "workersMin is 0: a worker starts when the first job arrives "
                        f"(watch it start with `ember logs {name} -f`)"
                    )
                    return
                if mine:
                    worker_id = mine[0]["id"]
                    follower = _LogFollower(endpoint_id, worker_id)
            current = next((w for w in mine if w["id"] == worker_id), None)
            if worker_id is not None:
                state, reason = (current["state"], current["reason"] or "") if current else ("STOPPED", "")
                if (state, reason) != shown:
                    shown = (state, reason)
                    _say(f"worker {worker_id}: {state}" + (f" ({reason})" if reason else ""))
                if state in READY:
                    if follower is not None:
                        follower.close(drain_s=0.5)
                    _say(f"worker {worker_id} is ready")
                    return
                if state in FAILED:
                    if follower is not None:
                        follower.close(drain_s=2.0)  # the error's last lines are what the user needs
                    _say(f"worker {worker_id} failed to start: {reason or state}", error=True)
                    raise typer.Exit(1)
            if status is not None:
                what = f"worker {worker_id}: {shown[0]}" if worker_id and shown else "waiting for a worker"
                status.update(f"{what} [dim]({time.monotonic() - started:.0f}s)[/]")
            time.sleep(POLL_S)
        _say(f"no worker of release {release} was ready within {timeout_s:g}s", error=True)
        raise typer.Exit(1)
    finally:
        if follower is not None:
            follower.close(drain_s=0)
