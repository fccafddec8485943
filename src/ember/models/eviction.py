"""Which cached models to evict under a disk budget: a pure decision (least recently used first).

It reads no disk and no clock; `ModelCache.evict` builds the entries and carries the decision out.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CacheEntry:
    repo_id: str
    size_bytes: int
    last_used_at: float | None  # None: never used since download; oldest of all
    busy: bool = False  # being downloaded right now


@dataclass(frozen=True)
class EvictionPlan:
    evict: list[str]
    total_bytes: int  # before eviction
    after_bytes: int  # what remains if the plan is carried out
    fits: bool  # after_bytes <= budget (False when in-use or busy models alone exceed it)


def plan_eviction(
    entries: Sequence[CacheEntry], budget_bytes: int, in_use: Collection[str] = ()
) -> EvictionPlan:
    """Evict least-recently-used models until the total fits `budget_bytes`.

    Never evicts a model named in `in_use` or one marked busy. Ties on `last_used_at` break by repo id
    so the same inputs always give the same plan.
    """
    total = sum(e.size_bytes for e in entries)
    remaining = total
    evict: list[str] = []
    candidates = sorted(
        (e for e in entries if e.repo_id not in in_use and not e.busy),
        key=lambda e: (e.last_used_at if e.last_used_at is not None else float("-inf"), e.repo_id),
    )
    for entry in candidates:
        if remaining <= budget_bytes:
            break
        evict.append(entry.repo_id)
        remaining -= entry.size_bytes
    return EvictionPlan(evict=evict, total_bytes=total, after_bytes=remaining, fits=remaining <= budget_bytes)
