"""`ember deploy --wait`: follow the new release's first worker until it is ready or has failed, printing
its state and reason as they change ("installing requirements", "starting handler") and its log lines as
they are written."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import httpx
import typer

from ember.cli.http import api_key, api_url, call

POLL_S = 0.5
READY = frozenset({"IDLE", "RUNNING"})
FAILED = frozenset({"UNHEALTHY", "STOPPED", "OUTDATED"})


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
                    typer.echo(line)
        except (httpx.HTTPError, RuntimeError):
            return  # closed under us, or the server went away: the state poll reports what matters

    def close(self, drain_s: float) -> None:
        """Let lines already on their way print (up to `drain_s`), then stop following."""
        self._thread.join(drain_s)
        self._closed.set()
        with contextlib.suppress(Exception):
            self._client.close()


def wait_for_worker(record: dict[str, Any], timeout_s: float) -> None:
    """Follow the endpoint's worker of `record`'s release until it is ready (returns) or fails, or
    `timeout_s` passes (typer.Exit(1) with the reason either way)."""
    endpoint_id, release, name = record["id"], record["release"], record["name"]
    if record.get("git"):
        typer.echo(f"a git release is built first: follow it with `ember releases {name}`")
        return
    deadline = time.monotonic() + timeout_s
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
                    typer.echo(f"worker {ready[0]['id']} is ready ({ready[0]['state']})")
                    return
                if not mine and record.get("workersMin", 0) == 0:
                    typer.echo(
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
                    typer.echo(f"worker {worker_id}: {state}" + (f" ({reason})" if reason else ""))
                if state in READY:
                    if follower is not None:
                        follower.close(drain_s=0.5)
                    typer.echo(f"worker {worker_id} is ready")
                    return
                if state in FAILED:
                    if follower is not None:
                        follower.close(drain_s=2.0)  # the error's last lines are what the user needs
                    typer.echo(f"worker {worker_id} failed to start: {reason or state}", err=True)
                    raise typer.Exit(1)
            time.sleep(POLL_S)
        typer.echo(f"no worker of release {release} was ready within {timeout_s:g}s", err=True)
        raise typer.Exit(1)
    finally:
        if follower is not None:
            follower.close(drain_s=0)
