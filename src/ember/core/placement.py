"""GPU placement: which free devices each pending worker gets, in preference order of GPU types and
in a fair order across endpoints; what cannot be placed stays THROTTLED. Pure.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Host:
    """A machine and its GPU devices by type name, e.g. {"NVIDIA H200": ["0", "1"]}."""

    id: str
    slots: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Pending:
    """A worker waiting for devices. Empty `gpu_type_ids` means a CPU worker (always placeable)."""

    worker_id: str
    endpoint_id: str
    gpu_type_ids: Sequence[str]
    gpu_count: int
    waiting_since: float


@dataclass(frozen=True)
class Assignment:
    """Devices for one worker: all `gpu_count` of them on one host and of one type.

    A CPU worker gets `host_id=None`, `gpu_type=None` and no devices: any host may run it.
    """

    worker_id: str
    host_id: str | None
    gpu_type: str | None
    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class Placement:
    assigned: list[Assignment]
    throttled: list[str]


def place(
    pending: Sequence[Pending], hosts: Sequence[Host], used: Collection[tuple[str, str, str]] = ()
) -> Placement:
    """Assign free devices to `pending` workers.

    `used` holds the (host id, GPU type, device id) slots already held by live workers (a slot is
    named by its type too: virtual declarations such as "TEST_GPU:2,A100:2" reuse device ids).

    Order: endpoints take turns (round-robin), the endpoint whose oldest worker has waited longest
    first, and within an endpoint its workers oldest first, so one busy endpoint cannot starve the
    others. Each worker tries its GPU types in preference order; for a type it takes the host with
    the fewest free devices of that type that still fit (best fit keeps big hosts free for multi-GPU
    workers; ties by host id). A worker that fits nowhere stays throttled; later, smaller workers may
    still be placed. Never assigns a device twice, nor one in `used`.
    """
    taken = set(used)
    free: dict[tuple[str, str], list[str]] = {}
    for host in hosts:
        for gpu_type, devices in host.slots.items():
            free[(host.id, gpu_type)] = [d for d in devices if (host.id, gpu_type, d) not in taken]

    assigned: list[Assignment] = []
    throttled: list[str] = []
    for want in _fair_order(pending):
        if not want.gpu_type_ids:
            assigned.append(Assignment(want.worker_id, None, None, ()))
            continue
        found = _find(want, free)
        if found is None:
            throttled.append(want.worker_id)
            continue
        host_id, gpu_type = found
        devices = free[found][: want.gpu_count]
        free[found] = free[found][want.gpu_count :]
        assigned.append(Assignment(want.worker_id, host_id, gpu_type, tuple(devices)))
    return Placement(assigned, throttled)


def _find(want: Pending, free: dict[tuple[str, str], list[str]]) -> tuple[str, str] | None:
    count = max(1, want.gpu_count)
    for gpu_type in want.gpu_type_ids:
        fits = [key for key, devices in free.items() if key[1] == gpu_type and len(devices) >= count]
        if fits:
            return min(fits, key=lambda key: (len(free[key]), key[0]))
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
