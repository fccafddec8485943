"""Placement: which host and which free devices each pending worker gets, in preference order of GPU
types, in a fair order across endpoints, spreading each endpoint over hosts; what cannot be placed
stays THROTTLED. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Host:
    """A machine, its GPU devices by type name, e.g. {"NVIDIA H200": ["0", "1"]}, and the worker
    runtimes it offers (empty: any)."""

    id: str
    slots: Mapping[str, Sequence[str]] = field(default_factory=dict)
    backends: frozenset[str] = frozenset()

    def runs(self, backend: str) -> bool:
        return not self.backends or not backend or backend in self.backends


@dataclass(frozen=True)
class Pending:
    """A worker waiting for devices. Empty `gpu_type_ids` means a CPU worker (always placeable)."""

    worker_id: str
    endpoint_id: str
    gpu_type_ids: Sequence[str]
    gpu_count: int
    waiting_since: float
    backend: str = ""  # the runtime it needs (local, docker); empty: any
    only_host: str | None = None  # the one host it may run on (what it mounts is there), or any


@dataclass(frozen=True)
class Assignment:
    """The host for one worker and its devices: all `gpu_count` of them of one type (a CPU worker:
    `gpu_type=None` and no devices)."""

    worker_id: str
    host_id: str
    gpu_type: str | None
    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class Placement:
    assigned: list[Assignment]
    throttled: list[str]


def place(
    pending: Sequence[Pending],
    hosts: Sequence[Host],
    used: Collection[tuple[str, str, str]] = (),
    load: Mapping[tuple[str, str], int] | None = None,
) -> Placement:
    """Assign a host and free devices to `pending` workers.

    `used` holds the (host id, GPU type, device id) slots already held by live workers (a slot is
    named by its type too: virtual declarations such as "TEST_GPU:2,A100:2" reuse device ids).
    `load` counts the live workers of each (endpoint id, host id).

    Order: endpoints take turns (round-robin), the endpoint whose oldest worker has waited longest
    first, and within an endpoint its workers oldest first, so one busy endpoint cannot starve the
    others. Each worker tries its GPU types in preference order; for a type it takes, among the hosts
    that run its runtime and have enough free devices of that type, the one with the fewest workers of
    its endpoint (an endpoint spreads over hosts, so losing one loses the fewest of its workers), then
    the fewest free devices (best fit keeps big hosts free for multi-GPU workers), then the first
    listed. A CPU worker goes to the host with the fewest workers of its endpoint (the first listed on
    a tie). A worker that fits nowhere stays throttled; later, smaller workers may still be placed.
    Never assigns a device twice, nor one in `used`.
    """
    taken = set(used)
    order = {host.id: i for i, host in enumerate(hosts)}
    counts: dict[tuple[str, str], int] = dict(load or {})
    free: dict[tuple[str, str], list[str]] = {}
    for host in hosts:
        for kind, ids in host.slots.items():
            free[(host.id, kind)] = [d for d in ids if (host.id, kind, d) not in taken]

    assigned: list[Assignment] = []
    throttled: list[str] = []
    for want in _fair_order(pending):
        able = {h.id for h in hosts if h.runs(want.backend) and want.only_host in (None, h.id)}

        def rank(host_id: str, want: Pending = want) -> tuple[int, int]:
            return counts.get((want.endpoint_id, host_id), 0), order[host_id]

        if not want.gpu_type_ids:
            if not able:
                throttled.append(want.worker_id)
                continue
            host_id = min(able, key=rank)
            gpu_type: str | None = None
            devices: tuple[str, ...] = ()
        else:
            found = _find(want, free, able, rank)
            if found is None:
                throttled.append(want.worker_id)
                continue
            host_id, gpu_type = found
            devices = tuple(free[found][: want.gpu_count])
            free[found] = free[found][want.gpu_count :]
        counts[(want.endpoint_id, host_id)] = counts.get((want.endpoint_id, host_id), 0) + 1
        assigned.append(Assignment(want.worker_id, host_id, gpu_type, devices))
    return Placement(assigned, throttled)


def _find(
    want: Pending,
    free: dict[tuple[str, str], list[str]],
    able: Collection[str],
    rank: Callable[[str], tuple[int, int]],
) -> tuple[str, str] | None:
    count = max(1, want.gpu_count)
    for gpu_type in want.gpu_type_ids:
        fits = [
            key
            for key, devices in free.items()
            if key[1] == gpu_type and key[0] in able and len(devices) >= count
        ]
        if fits:
            return min(fits, key=lambda key: (rank(key[0])[0], len(free[key]), rank(key[0])[1]))
    return None


def _fair_order(pending: Sequence[Pending]) -> list[Pending]:
    queues: dict[str, list[Pending]] = {}
    for want in sorted(pending, key=lambda p: (p.waiting_since, p.worker_id)):
        queues.setdefault(want.endpoint_id, []).append(want)
    # dicts keep insertion order: endpoints in the order of their oldest waiting worker.
    lanes = list(queues.values())
    order: list[Pending] = []
    depth = 0
    while len(order) < len(pending):
        order.extend(lane[depth] for lane in lanes if depth < len(lane))
        depth += 1
    return order
