"""GPU machines (hosts) and their agents: a host's states, when it counts as lost, what its agent
reports and what it is ordered to do. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum

from ember.core.errors import InvalidInput, Problem

# The host the control plane's own process runs workers on (its in-process agent).
LOCAL = "local"
# How long a host may go without reporting before it is lost (its workers are replaced elsewhere).
DEFAULT_TIMEOUT_S = 30.0
# How often an agent reports (its GPUs and the workers it runs) while nothing else happens.
REPORT_EVERY_S = 2.0
# An order handed to an agent's poll this long ago that its report neither answers nor lists as being
# carried out never reached it (the poll's answer was lost): it is handed out again.
ORDER_IN_FLIGHT_S = 10.0

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ORDER_KINDS = ("launch", "stop", "exec", "logs")


class HostState(StrEnum):
    NEW = "NEW"  # added, its agent has not reported yet
    READY = "READY"  # reporting: workers may be placed on it
    LOST = "LOST"  # silent past the timeout: its workers were replaced elsewhere


class OrderState(StrEnum):
    QUEUED = "QUEUED"
    SENT = "SENT"
    DONE = "DONE"


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise _bad("name", "name: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def is_lost(last_seen_at: float | None, created_at: float, now: float, timeout_s: float) -> bool:
    """Whether a host has been silent past `timeout_s`: since its last report, or, never having
    reported, since it was added (a NEW host is not lost: nothing is placed on it)."""
    if last_seen_at is None:
        return False
    return now - last_seen_at > timeout_s


def parse_slots(value: object) -> dict[str, list[str]]:
    """A report's `gpus`: {type: [device ids]}, each a short string (a bad one is a 400)."""
    if not isinstance(value, Mapping):
        raise _bad("gpus", "gpus: an object of GPU type -> list of device ids")
    slots: dict[str, list[str]] = {}
    for gpu_type, devices in value.items():
        if not isinstance(gpu_type, str) or not 0 < len(gpu_type) <= 64:
            raise _bad("gpus", "gpus: each GPU type is a string of 1-64 characters")
        if not isinstance(devices, Sequence) or isinstance(devices, str) or len(devices) > 64:
            raise _bad("gpus", f"gpus.{gpu_type}: a list of at most 64 device ids")
        ids = [str(d) for d in devices]
        if any(not 0 < len(d) <= 16 for d in ids) or len(set(ids)) != len(ids):
            raise _bad("gpus", f"gpus.{gpu_type}: device ids are distinct, 1-16 characters")
        slots[gpu_type] = ids
    return slots


def backends_of(stored: str) -> list[str]:
    """A host's runtimes as the store keeps them (comma-separated)."""
    return [b for b in stored.split(",") if b]


def parse_backends(value: object) -> list[str]:
    """A report's `backends`: the worker runtimes the host offers (local, docker)."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not all(isinstance(b, str) and b in ("local", "docker") for b in value)
    ):
        raise _bad("backends", 'backends: a list of "local" and/or "docker"')
    return sorted(set(value))


def _bad(field: str, why: str) -> InvalidInput:
    return InvalidInput(why, [Problem(field, why)])
