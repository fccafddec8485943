"""Every machine workers run on: this one, whose backends the control plane drives in its own process
(the embedded agent, host `local`), and the hosts whose agents connect in (`ember agent`), each driven
through a `RemoteBackend`. Once a tick the fleet reads the hosts' reports, marks a host silent past its
timeout LOST, and says what runs where; placement asks it for the hosts workers may go to."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ember.backends.base import Backend, Observed
from ember.backends.wire import observed_from_json
from ember.control.clock import Clock
from ember.control.remote import RemoteBackend
from ember.control.signals import Signals
from ember.core import hosts as H
from ember.core.errors import EmberError
from ember.core.placement import Host
from ember.core.workers import WorkerState
from ember.store.facade import Store
from ember.store.rows import HostRow, WorkerRow

log = logging.getLogger("ember.hosts")


@dataclass
class Observation:
    """What runs where, as of one look: `observed` by worker id, each from the place its record puts it
    on (a runtime with no record: from where it was found), and `places`, the backend of each; `strays`:
    runtimes found on a place their record does not put them (each with the backend to stop it
    through); `lost`: the LOST hosts, by id, with their names."""

    observed: dict[str, Observed] = field(default_factory=dict)
    places: dict[str, Backend] = field(default_factory=dict)
    strays: list[tuple[str, Backend]] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)


class Fleet:
    def __init__(
        self,
        local: Mapping[str, Backend],
        store: Store | None = None,
        signals: Signals | None = None,
        clock: Clock | None = None,
        *,
        local_host: Host | None = None,
        timeout_s: float = H.DEFAULT_TIMEOUT_S,
    ) -> None:
        self.local = local
        self.store = store
        self.signals = signals
        self.clock = clock
        self.local_host = local_host  # None: this process runs no workers itself
        self.timeout_s = timeout_s
        self.rows: dict[str, HostRow] = {}
        self._read = False  # whether `rows` were read (the process that runs the lifecycle reads them)
        self._remote: dict[str, RemoteBackend] = {}
        # Worker id -> when its launch on a host was answered: until a report made after that, the
        # host's reports may not list it yet.
        self._launched: dict[str, float] = {}

    # Where a worker runs -------------------------------------------------------------------------

    def for_worker(self, w: WorkerRow) -> Backend | None:
        if w["host"] == H.LOCAL:
            return self.local.get(w["backend"])
        if w["host"] not in self.rows and self.store is None:
            return None
        return self.remote(w["host"])

    def remote(self, host_id: str) -> RemoteBackend:
        backend = self._remote.get(host_id)
        if backend is None:
            assert self.store is not None and self.signals is not None and self.clock is not None
            backend = RemoteBackend(
                self.store, self.signals, self.clock, host_id, lambda: self._state(host_id)
            )
            self._remote[host_id] = backend
        return backend

    def launched(self, worker_id: str) -> None:
        """A worker's launch on a host was answered (its host's next reports will list it)."""
        if self.clock is not None:
            self._launched[worker_id] = self.clock.now()

    def _state(self, host_id: str) -> str:
        row = self.rows.get(host_id)
        if row is not None:
            return row["state"]
        # Not among the hosts read: removed (where they are read), else not known here (an API replica).
        return H.HostState.LOST.value if self._read else ""

    def kinds(self) -> set[str]:
        """The worker runtimes some machine offers: this one's backends and the READY hosts'."""
        kinds = set(self.local)
        for row in self.rows.values():
            if row["state"] == H.HostState.READY:
                kinds.update(H.backends_of(row["backends"]))
        return kinds

    def hosts(self) -> list[Host]:
        """The machines placement may put workers on: this one (unless it runs none) and every READY
        host, with its GPUs and runtimes."""
        out = [self.local_host] if self.local_host is not None else []
        for row in self.rows.values():
            if row["state"] == H.HostState.READY:
                slots = json.loads(row["slots"] or "{}")
                backends = frozenset(H.backends_of(row["backends"]))
                out.append(Host(row["id"], slots, backends or frozenset({"none"})))
        return out

    # Once a tick -------------------------------------------------------------------------------

    async def refresh(self, now: float) -> None:
        """Read the hosts; mark those silent past the timeout LOST."""
        if self.store is None:
            return
        s = self.store
        rows = {r["id"]: r for r in await s.run(s.hosts.list)}
        for host_id, row in list(rows.items()):
            if row["state"] == H.HostState.READY and H.is_lost(
                row["last_seen_at"], row["created_at"], now, self.timeout_s
            ):
                silent_since = row["last_seen_at"] or now
                if await s.run(s.hosts.mark_lost, host_id, silent_since):
                    log.warning(
                        "host_lost host=%s name=%s silent_s=%.1f", host_id, row["name"], now - silent_since
                    )
                    rows[host_id] = {**row, "state": H.HostState.LOST.value, "observed": "[]"}
        self.rows = rows
        self._read = True
        for gone in set(self._remote) - set(rows):
            del self._remote[gone]

    async def observe(self, workers: Sequence[WorkerRow]) -> Observation:
        """What runs where (see `Observation`). A local backend that cannot say leaves its workers
        counted as running (without an observation we must not conclude that they died)."""
        seen = Observation()
        where = {w["id"]: w for w in workers}
        for name, backend in self.local.items():
            try:
                found = await backend.observe()
            except EmberError as exc:
                log.warning("observe_failed backend=%s error=%s", name, exc)
                for w in workers:
                    if w["host"] == H.LOCAL and w["backend"] == name:
                        seen.observed.setdefault(
                            w["id"], Observed(w["id"], w["endpoint_id"], w["release"], True)
                        )
                continue
            for o in found:
                self._sort(seen, o, H.LOCAL, backend, where)
        for host_id, row in self.rows.items():
            if row["state"] == H.HostState.LOST:
                seen.lost[host_id] = row["name"]
                continue
            for entry in json.loads(row["observed"] or "[]"):
                found_there = observed_from_json(entry)
                if found_there is not None:
                    self._sort(seen, found_there, host_id, self.remote(host_id), where)
            reported = row["last_seen_at"] or 0.0
            for w in workers:
                # Launched there since its last report: not listed yet, but starting.
                if w["host"] == host_id and w["id"] not in seen.observed:
                    answered = self._launched.get(w["id"])
                    if answered is not None and reported <= answered + H.REPORT_EVERY_S:
                        seen.observed[w["id"]] = Observed(w["id"], w["endpoint_id"], w["release"], True)
        if self._read:  # workers of a host that was removed: lost with it
            for w in workers:
                if w["host"] != H.LOCAL and w["host"] not in self.rows:
                    seen.lost[w["host"]] = f"{w['host']} (removed)"
        live = {w["id"] for w in workers if w["state"] != WorkerState.STOPPED}
        for wid in list(self._launched):
            if wid not in live:
                del self._launched[wid]
        return seen

    @staticmethod
    def _sort(
        seen: Observation, o: Observed, place: str, backend: Backend, where: dict[str, WorkerRow]
    ) -> None:
        w = where.get(o.worker_id)
        if w is None or w["host"] == place:
            seen.observed[o.worker_id] = o
            seen.places[o.worker_id] = backend
        else:
            seen.strays.append((o.worker_id, backend))
