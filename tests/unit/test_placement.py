"""GPU placement: preference order, whole workers on one host, fairness across endpoints, throttling,
and properties: no slot is over-assigned and every device is used at most once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ember.core.placement import Assignment, Host, Pending, place

H200, A100, TEST = "NVIDIA H200", "NVIDIA A100 80GB PCIe", "TEST_GPU"


def want(
    worker: str, endpoint: str = "ep-a", types: tuple[str, ...] = (TEST,), count: int = 1, since: float = 0.0
) -> Pending:
    return Pending(worker, endpoint, types, count, since)


def test_a_worker_gets_a_free_device_of_its_type() -> None:
    result = place([want("w1")], [Host("h1", {TEST: ["0", "1"]})])
    assert result.assigned == [Assignment("w1", "h1", TEST, ("0",))]
    assert result.throttled == []


def test_gpu_types_are_tried_in_preference_order() -> None:
    hosts = [Host("h1", {A100: ["0"], H200: ["0"]})]
    result = place([want("w1", types=(H200, A100)), want("w2", types=(H200, A100), since=1)], hosts)
    assert [(a.worker_id, a.gpu_type) for a in result.assigned] == [("w1", H200), ("w2", A100)]


def test_devices_in_use_are_not_assigned() -> None:
    result = place([want("w1")], [Host("h1", {TEST: ["0", "1"]})], used={("h1", TEST, "0")})
    assert result.assigned[0].device_ids == ("1",)


def test_a_multi_gpu_worker_takes_all_its_devices_on_one_host() -> None:
    hosts = [Host("h1", {TEST: ["0"]}), Host("h2", {TEST: ["0", "1", "2"]})]
    result = place([want("w1", count=2)], hosts)
    assert result.assigned == [Assignment("w1", "h2", TEST, ("0", "1"))]


def test_a_worker_that_fits_nowhere_stays_throttled() -> None:
    hosts = [Host("h1", {TEST: ["0"]}), Host("h2", {TEST: ["0"]})]
    result = place([want("w1", count=2), want("w2", types=(H200,))], hosts)
    assert result.assigned == []
    assert result.throttled == ["w1", "w2"]


def test_no_hosts_throttles_every_gpu_worker() -> None:
    assert place([want("w1")], []).throttled == ["w1"]


def test_a_cpu_worker_goes_to_any_host_and_waits_when_there_is_none() -> None:
    result = place([want("w1", types=())], [Host("h1")])
    assert result.assigned == [Assignment("w1", "h1", None, ())]
    assert place([want("w1", types=())], []).throttled == ["w1"]


def test_an_endpoint_spreads_over_hosts() -> None:
    hosts = [Host("a", {TEST: ["0", "1"]}), Host("b", {TEST: ["0", "1"]})]
    result = place([want(f"w{i}", since=i) for i in range(4)], hosts)
    by_host = sorted((a.host_id, a.worker_id) for a in result.assigned)
    assert by_host == [("a", "w0"), ("a", "w2"), ("b", "w1"), ("b", "w3")]


def test_spreading_counts_the_workers_already_placed() -> None:
    hosts = [Host("a", {TEST: ["0", "1", "2"]}), Host("b", {TEST: ["0", "1", "2"]})]
    result = place([want("w1"), want("w2", since=1)], hosts, load={("ep-a", "a"): 2, ("ep-a", "b"): 1})
    # b has fewer of the endpoint's workers; then a tie, broken by best fit (b has fewer free devices)
    assert [a.host_id for a in result.assigned] == ["b", "b"]
    other = place([want("w1", endpoint="ep-b")], hosts, load={("ep-a", "a"): 2})
    assert other.assigned[0].host_id == "a"  # another endpoint's workers do not count


def test_cpu_workers_spread_too() -> None:
    hosts = [Host("a"), Host("b")]
    result = place([want(f"w{i}", types=(), since=i) for i in range(4)], hosts)
    assert [a.host_id for a in result.assigned] == ["a", "b", "a", "b"]


def test_a_worker_goes_only_to_a_host_that_runs_its_runtime() -> None:
    hosts = [Host("a", {TEST: ["0"]}, frozenset({"local"})), Host("b", {TEST: ["0"]}, frozenset({"docker"}))]
    docker = Pending("w1", "ep-a", (TEST,), 1, 0.0, "docker")
    assert place([docker], hosts).assigned == [Assignment("w1", "b", TEST, ("0",))]
    cpu = Pending("w2", "ep-a", (), 0, 0.0, "docker")
    assert place([cpu], hosts).assigned == [Assignment("w2", "b", None, ())]
    assert place([Pending("w3", "ep-a", (), 0, 0.0, "kubernetes")], hosts).throttled == ["w3"]


def test_best_fit_keeps_the_bigger_host_free() -> None:
    hosts = [Host("big", {TEST: ["0", "1", "2", "3"]}), Host("small", {TEST: ["0"]})]
    result = place([want("w1")], hosts)
    assert result.assigned[0].host_id == "small"


def test_endpoints_take_turns_oldest_first() -> None:
    pending = [
        want("a1", "ep-a", since=1),
        want("a2", "ep-a", since=2),
        want("a3", "ep-a", since=3),
        want("b1", "ep-b", since=5),
    ]
    result = place(pending, [Host("h1", {TEST: ["0", "1"]})])
    assert [a.worker_id for a in result.assigned] == ["a1", "b1"]
    assert result.throttled == ["a2", "a3"]


def test_the_longest_waiting_endpoint_goes_first() -> None:
    pending = [want("a1", "ep-a", since=9), want("b1", "ep-b", since=1)]
    result = place(pending, [Host("h1", {TEST: ["0"]})])
    assert [a.worker_id for a in result.assigned] == ["b1"]


def test_a_big_worker_that_does_not_fit_does_not_block_smaller_ones() -> None:
    pending = [want("big", count=4, since=0), want("small", "ep-b", since=1)]
    result = place(pending, [Host("h1", {TEST: ["0", "1"]})])
    assert [a.worker_id for a in result.assigned] == ["small"]
    assert result.throttled == ["big"]


# Properties --------------------------------------------------------------------------------------

TYPES = [TEST, A100, H200]


@st.composite
def capacity(draw: st.DrawFn) -> list[Host]:
    hosts = []
    for h in range(draw(st.integers(0, 3))):
        slots = {
            t: [str(i) for i in range(draw(st.integers(0, 4)))] for t in draw(st.sets(st.sampled_from(TYPES)))
        }
        hosts.append(Host(f"h{h}", slots))
    return hosts


pendings = st.lists(
    st.builds(
        Pending,
        worker_id=st.integers(0, 10**6).map(str),
        endpoint_id=st.sampled_from(["ep-a", "ep-b", "ep-c"]),
        gpu_type_ids=st.lists(st.sampled_from(TYPES), max_size=3, unique=True).map(tuple),
        gpu_count=st.integers(1, 3),
        waiting_since=st.floats(0, 100, allow_nan=False),
    ),
    max_size=12,
    unique_by=lambda p: p.worker_id,
)


@given(pendings, capacity(), st.data())
def test_never_over_assigns_and_uses_each_device_once(
    pending: list[Pending], hosts: list[Host], data: st.DataObject
) -> None:
    all_devices = [(h.id, t, d) for h in hosts for t, ds in h.slots.items() for d in ds]
    used = set(data.draw(st.lists(st.sampled_from(all_devices), unique=True))) if all_devices else set()
    result = place(pending, hosts, used)
    by_worker = {p.worker_id: p for p in pending}
    assert sorted([a.worker_id for a in result.assigned] + result.throttled) == sorted(by_worker)
    taken: list[tuple[str | None, str | None, str]] = []
    for a in result.assigned:
        p = by_worker[a.worker_id]
        if not p.gpu_type_ids:
            assert a.device_ids == () and a.gpu_type is None
            assert any(h.id == a.host_id for h in hosts)
            continue
        assert a.gpu_type in p.gpu_type_ids
        assert len(a.device_ids) == p.gpu_count
        assert a.gpu_type is not None
        host = next(h for h in hosts if h.id == a.host_id)
        assert set(a.device_ids) <= set(host.slots[a.gpu_type])
        taken.extend((a.host_id, a.gpu_type, d) for d in a.device_ids)
    assert len(taken) == len(set(taken))
    assert not set(taken) & used
    for wid in result.throttled:
        assert by_worker[wid].gpu_type_ids or not hosts  # a CPU worker waits only for a host


@given(pendings, capacity())
def test_a_throttled_worker_really_did_not_fit(pending: list[Pending], hosts: list[Host]) -> None:
    result = place(pending, hosts)
    # Free devices left per (host, type) after placement.
    left = {(h.id, t): len(ds) for h in hosts for t, ds in h.slots.items()}
    for a in result.assigned:
        if a.host_id is not None and a.gpu_type is not None:
            left[(a.host_id, a.gpu_type)] -= len(a.device_ids)
    by_worker = {p.worker_id: p for p in pending}
    for wid in result.throttled:
        p = by_worker[wid]
        assert all(n < p.gpu_count for (_, t), n in left.items() if t in p.gpu_type_ids)


def test_a_worker_bound_to_a_host_goes_only_there() -> None:
    hosts = [Host("a", {TEST: ["0"]}), Host("local", {TEST: ["0"]})]
    bound = Pending("w1", "ep-a", (TEST,), 1, 0.0, only_host="local")
    assert place([bound], hosts).assigned == [Assignment("w1", "local", TEST, ("0",))]
    assert place([bound], hosts, used={("local", TEST, "0")}).throttled == ["w1"]
