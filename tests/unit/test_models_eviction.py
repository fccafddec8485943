"""The eviction decision: least recently used first, never in-use or busy models, deterministic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ember.models.eviction import CacheEntry, plan_eviction


def entry(repo: str, size: int, used: float | None, busy: bool = False) -> CacheEntry:
    return CacheEntry(repo_id=repo, size_bytes=size, last_used_at=used, busy=busy)


def test_nothing_is_evicted_when_the_cache_fits() -> None:
    plan = plan_eviction([entry("a/x", 10, 1.0)], budget_bytes=10)
    assert plan.evict == [] and plan.fits and plan.after_bytes == 10


def test_least_recently_used_goes_first_and_never_used_before_all() -> None:
    entries = [entry("a/new", 10, 30.0), entry("a/old", 10, 10.0), entry("a/never", 10, None)]
    assert plan_eviction(entries, budget_bytes=15).evict == ["a/never", "a/old"]


def test_models_in_use_or_downloading_are_kept_even_if_the_budget_is_missed() -> None:
    entries = [entry("a/used", 100, 1.0), entry("a/busy", 100, 2.0, busy=True), entry("a/free", 5, 3.0)]
    plan = plan_eviction(entries, budget_bytes=10, in_use={"a/used"})
    assert plan.evict == ["a/free"] and not plan.fits and plan.after_bytes == 200


def test_ties_break_by_name() -> None:
    entries = [entry("b/y", 10, 5.0), entry("a/x", 10, 5.0)]
    assert plan_eviction(entries, budget_bytes=10).evict == ["a/x"]


entries_st = st.lists(
    st.builds(
        entry,
        st.sampled_from([f"o/m{i}" for i in range(8)]),
        st.integers(0, 1000),
        st.one_of(st.none(), st.floats(0, 1e6)),
        st.booleans(),
    ),
    unique_by=lambda e: e.repo_id,
    max_size=8,
)


@given(entries_st, st.integers(0, 5000), st.sets(st.sampled_from([f"o/m{i}" for i in range(8)])))
def test_plan_properties(entries: list[CacheEntry], budget: int, in_use: set[str]) -> None:
    plan = plan_eviction(entries, budget, in_use)
    by_id = {e.repo_id: e for e in entries}
    assert not set(plan.evict) & in_use
    assert not any(by_id[r].busy for r in plan.evict)
    assert plan.after_bytes == plan.total_bytes - sum(by_id[r].size_bytes for r in plan.evict)
    evictable = sum(e.size_bytes for e in entries if e.repo_id not in in_use and not e.busy)
    assert plan.fits == (plan.after_bytes <= budget)
    assert plan.fits or plan.after_bytes == plan.total_bytes - evictable  # evicts all it may before giving up
    if plan.evict:  # it stops as soon as the budget is met
        assert plan.after_bytes + by_id[plan.evict[-1]].size_bytes > budget
    assert plan == plan_eviction(list(reversed(entries)), budget, in_use)
