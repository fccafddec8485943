"""The pure parts of warm containers: which commands get a launcher (and a standby interpreter), what a
parked container must share with a launch to serve it, and the names parked containers carry."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ember.backends.base import LaunchSpec, Mount
from ember.backends.container_entry import split_python
from ember.backends.docker_warm import launch_argv, parse_warm_name, warm_key, warm_name

SPEC = LaunchSpec(
    worker_id="wk-1",
    endpoint_id="ep-1",
    account_id="acct-a",
    release=3,
    env={"RUNPOD_POD_ID": "wk-1"},
    image="reg/app:v1",
    mounts=(Mount("/models", "/runpod-volume/huggingface-cache", True),),
)
KEY = warm_key(SPEC, "sha256:aaa", ["python3", "-u", "handler.py"], True)


@pytest.mark.parametrize(
    ("config", "command", "argv"),
    [
        ({"Cmd": ["python3", "-u", "handler.py"]}, None, ["python3", "-u", "handler.py"]),
        ({"Cmd": ["sh"]}, ["python", "handler.py"], ["python", "handler.py"]),
        (
            {"Entrypoint": ["/usr/local/bin/python3.11"], "Cmd": ["-u", "h.py"]},
            None,
            ["/usr/local/bin/python3.11", "-u", "h.py"],
        ),
        ({"Entrypoint": ["/start.sh"], "Cmd": ["python3", "h.py"]}, None, None),  # a shell script first
        ({"Cmd": ["bash", "-c", "python3 h.py"]}, None, None),
        ({}, None, None),
    ],
)
def test_only_a_command_run_by_python_gets_the_launcher(
    config: dict[str, Any], command: list[str] | None, argv: list[str] | None
) -> None:
    assert launch_argv(config, command) == argv


@pytest.mark.parametrize(
    ("argv", "split"),
    [
        (["python3", "-u", "handler.py"], (["python3", "-u"], "handler.py", [])),
        (["python", "handler.py", "--rp_serve_api"], (["python"], "handler.py", ["--rp_serve_api"])),
        (
            ["python3", "-X", "dev", "-OO", "-Wignore", "h.py", "a"],
            (["python3", "-X", "dev", "-OO", "-Wignore"], "h.py", ["a"]),
        ),
        (["python3", "--", "h.py"], (["python3", "--"], "h.py", [])),
        (["python3", "-c", "print(1)"], None),  # code, not a script: started afresh each time
        (["python3", "-m", "worker"], None),
        (["python3", "-i", "h.py"], None),
        (["python3", "-u"], None),
        (["python3", "-"], None),
    ],
)
def test_a_standby_interpreter_is_kept_only_for_python_running_a_script(
    argv: list[str], split: tuple[list[str], str, list[str]] | None
) -> None:
    assert split_python(argv) == split


@pytest.mark.parametrize(
    "other",
    [
        warm_key(replace(SPEC, account_id="acct-b"), "sha256:aaa", ["python3", "-u", "handler.py"], True),
        warm_key(replace(SPEC, endpoint_id="ep-2"), "sha256:aaa", ["python3", "-u", "handler.py"], True),
        warm_key(replace(SPEC, release=4), "sha256:aaa", ["python3", "-u", "handler.py"], True),
        warm_key(SPEC, "sha256:bbb", ["python3", "-u", "handler.py"], True),
        warm_key(SPEC, "sha256:aaa", ["python3", "handler.py"], True),
        warm_key(replace(SPEC, mounts=()), "sha256:aaa", ["python3", "-u", "handler.py"], True),
        warm_key(
            replace(SPEC, real_gpus=True, gpu_devices=("0",)),
            "sha256:aaa",
            ["python3", "-u", "handler.py"],
            True,
        ),
        warm_key(SPEC, "sha256:aaa", ["python3", "-u", "handler.py"], False),
    ],
)
def test_a_parked_container_serves_only_the_same_account_endpoint_release_image_and_command(
    other: str,
) -> None:
    assert other != KEY


def test_what_changes_per_worker_does_not_change_the_key() -> None:
    # Identity, environment and (not real) GPUs reach the container through its launcher.
    same = replace(SPEC, worker_id="wk-2", env={"RUNPOD_POD_ID": "wk-2", "X": "y"}, gpu_devices=("1",))
    assert warm_key(same, "sha256:aaa", ["python3", "-u", "handler.py"], True) == KEY


def test_a_parked_containers_name_carries_when_it_was_parked_and_its_control_directory() -> None:
    name = warm_name(1_700_000_000.25, "0123456789ab")
    assert name == "ember-warm-1700000000250-0123456789ab"
    assert parse_warm_name("/" + name) == (1_700_000_000.25, "0123456789ab")
    assert parse_warm_name("ember-wk-123") is None
    assert parse_warm_name("ember-warm-12-../../etc") is None
