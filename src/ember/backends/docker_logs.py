"""A worker container's logs: read, followed, and kept in `logs_dir/<worker id>.log` (bounded) when its
container is removed or parked, so a stopped worker's logs stay readable, as a local worker's do.

A container resumed from the warm pool has served other workers before: a worker's part of its output
starts at the moment it took the container over (`_since`), and what came before is not its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker.errors

from ember.backends.base import Alive, throttled
from ember.backends.docker_api import Container, LogStream
from ember.core.errors import BackendError, NotFound

# A removed container's kept log: at most its last this many lines, and the file at most this size.
KEPT_LOG_LINES = 20_000
KEPT_LOG_BYTES = 4 * 1024 * 1024
_FOLLOW_POLL_S = 0.5
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ContainerLogs:
    """Logs for `DockerBackend`, which provides `_container`, `_since` and `_logs_dir`."""

    _logs_dir: Path | None
    _follows: dict[str, set[LogStream]]

    async def _container(self, worker_id: str) -> Container:
        raise NotImplementedError

    def _since(self, container: Container, worker_id: str) -> float | None:
        raise NotImplementedError

    def kept_log_path(self, worker_id: str) -> Path | None:
        """Where the logs of `worker_id`'s removed containers are kept (None: not kept)."""
        if self._logs_dir is None or not _SAFE_ID.match(worker_id):
            return None
        return self._logs_dir / f"{worker_id}.log"

    def _keep_logs(self, container: Container, worker_id: str) -> None:
        """Append the worker's output (its last KEPT_LOG_LINES lines) to its kept log, then trim that
        file to its last KEPT_LOG_BYTES. Best effort: a log that cannot be kept must not keep a worker
        from stopping."""
        path = self.kept_log_path(worker_id)
        if path is None:
            return
        since = self._since(container, worker_id)
        try:
            data = container.logs(stdout=True, stderr=True, stream=False, tail=KEPT_LOG_LINES, since=since)
        except docker.errors.DockerException:
            return
        if not data:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as kept:
                kept.write(data if data.endswith(b"\n") else data + b"\n")
            _trim(path, KEPT_LOG_BYTES)
        except OSError:
            return

    def _end_follows(self, worker_id: str) -> None:
        """End every followed stream of `worker_id` (its container is parked: it no longer runs)."""
        # A copy: each follower discards its stream from the set as it ends, on the event loop's thread.
        for stream in list(self._follows.pop(worker_id, ())):
            with contextlib.suppress(Exception):
                stream.close()

    async def logs(
        self,
        worker_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        alive: Alive | None = None,
    ) -> AsyncIterator[str]:
        """The container's stdout and stderr lines; with `follow`, until the container stops.

        Without a container (removed, or not created yet), the worker's kept log: with `tail` None, the
        kept log's lines come before the container's. With `follow` and `alive`, a container that is
        not there yet, or stopped and replaced by a new one, is waited for and followed from its start.
        Raises NotFound when there is neither a container nor a kept log (and nothing to wait for).
        """
        may_start = throttled(alive if follow else None)
        container = await self._maybe_container(worker_id)
        kept = self.kept_log_path(worker_id)
        if container is None and not await may_start():
            if kept is None or not await asyncio.to_thread(kept.is_file):
                raise NotFound(f"worker {worker_id} has no container")
            for line in await asyncio.to_thread(_read_lines, kept, tail):
                yield line
            return
        if tail is None and kept is not None:
            for line in await asyncio.to_thread(_read_lines, kept, None):
                yield line
        if container is None:
            tail = None  # its container starts later: all of its output is new
        followed: str | None = None
        while True:
            if container is not None and container.id != followed:
                async for line in self._container_logs(container, worker_id, tail, follow):
                    yield line
                followed, tail = container.id, None  # a later container (a restart) is new: all of it
            if not await may_start():
                return
            await asyncio.sleep(_FOLLOW_POLL_S)
            container = await self._maybe_container(worker_id)

    async def _maybe_container(self, worker_id: str) -> Container | None:
        try:
            return await self._container(worker_id)
        except NotFound:
            return None

    async def _container_logs(
        self, container: Container, worker_id: str, tail: int | None, follow: bool
    ) -> AsyncIterator[str]:
        since = await asyncio.to_thread(self._since, container, worker_id)
        try:
            stream = await asyncio.to_thread(
                lambda: container.logs(
                    stream=True, follow=follow, tail="all" if tail is None else tail, since=since
                )
            )
        except docker.errors.NotFound:
            return  # removed meanwhile: its output is in the kept log
        except docker.errors.DockerException as exc:
            raise BackendError(f"docker: reading logs of worker {worker_id} failed: {exc}")
        followed = self._follows.setdefault(worker_id, set()) if follow else set()
        followed.add(stream)
        chunks: Iterator[bytes] = iter(stream)
        pending = b""
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
            if pending:
                yield pending.decode("utf-8", "replace")
        except Exception:
            if follow and self._follows.get(worker_id) is not followed:
                return  # closed under us by `_end_follows`: the worker's container was parked
            raise
        finally:
            followed.discard(stream)
            # Closing the response unblocks a thread still waiting in a followed stream.
            with contextlib.suppress(Exception):
                stream.close()


def _read_lines(path: Path, tail: int | None) -> list[str]:
    """The lines of a kept log (bounded in size by `_trim`), the last `tail` of them when given."""
    try:
        lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return []
    if tail is None:
        return lines
    return lines[-tail:] if tail > 0 else []


def _trim(path: Path, max_bytes: int) -> None:
    """Keep only the file's last `max_bytes` (from a line start), replacing it atomically."""
    size = path.stat().st_size
    if size <= max_bytes:
        return
    with open(path, "rb") as f:
        f.seek(size - max_bytes)
        data = f.read()
    cut = data.find(b"\n")
    data = data[cut + 1 :] if cut != -1 else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
