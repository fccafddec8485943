"""Hosts, pure: a report's GPUs and runtimes are checked (a bad one names its field), a host counts as
lost only once it has reported and then gone silent past its timeout, and a launch spec and a worker
observation survive the trip through JSON to an agent and back."""

from __future__ import annotations

import json

import pytest

from ember.backends.base import LaunchSpec, Mount, Observed
from ember.backends.wire import observed_from_json, observed_to_json, spec_from_json, spec_to_json
from ember.core.errors import InvalidInput
from ember.core.hosts import check_name, is_lost, parse_backends, parse_slots


def test_a_report_s_gpus_and_runtimes_are_checked() -> None:
    assert parse_slots({"TEST_GPU": ["0", 1]}) == {"TEST_GPU": ["0", "1"]}
    for bad in ([], {"": ["0"]}, {"T": "01"}, {"T": ["0", "0"]}, {"T": [""]}, {"T": ["x"] * 65}):
        with pytest.raises(InvalidInput) as caught:
            parse_slots(bad)
        assert caught.value.problems[0].field == "gpus"
    assert parse_backends(["docker", "local", "local"]) == ["docker", "local"]
    for bad_backends in ("local", ["kubernetes"], [1]):
        with pytest.raises(InvalidInput):
            parse_backends(bad_backends)


def test_host_names() -> None:
    assert check_name("gpu-box.1_a") == "gpu-box.1_a"
    for bad in ("", "-x", "a b", "x" * 64, None, 3):
        with pytest.raises(InvalidInput):
            check_name(bad)


def test_a_host_is_lost_once_silent_past_its_timeout_after_reporting() -> None:
    assert not is_lost(None, created_at=0.0, now=1000.0, timeout_s=30.0)  # never reported: NEW
    assert not is_lost(100.0, created_at=0.0, now=130.0, timeout_s=30.0)
    assert is_lost(100.0, created_at=0.0, now=130.5, timeout_s=30.0)


def test_a_launch_spec_and_an_observation_cross_the_wire_unchanged() -> None:
    spec = LaunchSpec(
        worker_id="wk-1",
        endpoint_id="ep-1",
        account_id="acct-1",
        release=3,
        env={"A": "1"},
        source_dir="0123abcd",
        handler="src/handler.py",
        command=["python", "-u", "x.py"],
        gpu_type="TEST_GPU",
        gpu_devices=("0", "1"),
        mounts=(Mount("/a", "/b", read_only=False),),
        labels={"ember.worker-id": "wk-1"},
        admin=True,
    )
    assert spec_from_json(json.loads(json.dumps(spec_to_json(spec)))) == spec
    seen = Observed("wk-1", "ep-1", 3, running=False, exit_code=137, started_at=5.5, detail="exited")
    assert observed_from_json(json.loads(json.dumps(observed_to_json(seen)))) == seen
    assert observed_from_json({"worker_id": "wk-1"}) is None
    assert observed_from_json("nope") is None
