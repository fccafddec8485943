"""The `ember` CLI against a live server (EMBER_API_URL / EMBER_API_KEY): deploy, endpoints, workers,
jobs and logs print what a person or a script needs; a bad call prints one clear error and exits 1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import LiveServer, handler_dir, wait_for


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def deployed(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    source = handler_dir(tmp_path_factory.mktemp("cli"), "prints_a_lot")
    proc = server.cli(
        "deploy",
        str(source),
        "--name",
        "chatty",
        "--workers-max",
        "2",
        "--idle-timeout",
        "300",
        "--env",
        "EMBER_TEST_SDK=ember",
        "--json",
    )
    return _json(proc)  # type: ignore[no-any-return]


def test_deploy_json_prints_the_endpoint_record(server: LiveServer, deployed: dict[str, Any]) -> None:
    assert deployed["id"].startswith("ep-")
    assert deployed["name"] == "chatty" and deployed["workersMax"] == 2
    assert deployed["env"] == {"EMBER_TEST_SDK": "ember"}
    assert server.api("GET", f"/v1/endpoints/{deployed['id']}").status_code == 200


def test_deploy_again_updates_the_same_endpoint(
    server: LiveServer, deployed: dict[str, Any], tmp_path: Path
) -> None:
    source = handler_dir(tmp_path, "prints_a_lot")
    again = _json(server.cli("deploy", str(source), "--name", "chatty", "--workers-max", "2", "--json"))
    assert again["id"] == deployed["id"]
    names = [e["name"] for e in _json(server.cli("endpoints", "--json"))]
    assert names.count("chatty") == 1


def test_endpoints_and_workers_print_json_arrays(server: LiveServer, deployed: dict[str, Any]) -> None:
    eps = _json(server.cli("endpoints", "--json"))
    assert isinstance(eps, list) and deployed["id"] in {e["id"] for e in eps}
    resp = server.api("POST", f"/v2/{deployed['id']}/runsync", json={"input": {"lines": 3}})
    assert resp.json()["status"] == "COMPLETED", resp.text
    for ref in (deployed["id"], "chatty"):  # by id or by name
        workers = _json(server.cli("workers", ref, "--json"))
        assert isinstance(workers, list) and len(workers) >= 1
        assert {"id", "state", "type", "release"} <= set(workers[0])
    table = server.cli("workers", "chatty")
    assert table.returncode == 0 and workers[0]["id"] in table.stdout


def test_jobs_lists_the_endpoint_s_jobs(server: LiveServer, deployed: dict[str, Any]) -> None:
    job = server.api("POST", f"/v2/{deployed['id']}/runsync", json={"input": {"lines": 1}}).json()
    rows = _json(server.cli("jobs", deployed["id"], "--json"))
    assert job["id"] in {r["id"] for r in rows}
    assert {r["status"] for r in rows if r["id"] == job["id"]} == {"COMPLETED"}


def test_logs_show_the_worker_s_output(server: LiveServer, deployed: dict[str, Any]) -> None:
    resp = server.api("POST", f"/v2/{deployed['id']}/runsync", json={"input": {"lines": 4}})
    assert resp.json()["status"] == "COMPLETED", resp.text

    def printed() -> subprocess.CompletedProcess[str] | None:
        proc = server.cli("logs", "chatty")
        return proc if proc.returncode == 0 and "stdout line 3 " in proc.stdout else None

    proc = wait_for(printed, 30, interval_s=0.5, what="the handler's prints in `ember logs`")
    assert "stderr line 3 " in proc.stdout
    assert "[wk-" in proc.stdout  # each line names its worker


def test_usage_takes_an_endpoint_name_as_other_commands_do(server: LiveServer, tmp_path: Path) -> None:
    # An active worker is billed for all its time, so usage accrues without a job.
    endpoint = server.deploy("metered", handler_dir(tmp_path, "echo"), workersMin=1, workersMax=1)

    def billed(ref: str) -> set[str]:
        items = _json(server.cli("usage", "--endpoint", ref, "--json"))["items"]
        return {i["endpointId"] for i in items}

    wait_for(lambda: billed(endpoint["id"]), 30, interval_s=0.5, what="the worker's metered usage")
    assert billed("metered") == {endpoint["id"]}
    table = server.cli("usage", "--endpoint", "metered")
    assert table.returncode == 0 and endpoint["id"] in table.stdout
    # Usage stays readable by name after the endpoint is deleted.
    assert server.api("DELETE", f"/v1/endpoints/{endpoint['id']}").status_code == 200
    assert billed("metered") == {endpoint["id"]}
    missing = server.cli("usage", "--endpoint", "no-such-endpoint")
    assert missing.returncode == 1 and "not found" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("workers", "no-such-endpoint"), "not found"),
        (("logs", "no-such-endpoint"), "not found"),
        (("deploy", "/nonexistent/dir", "--name", "x"), "/nonexistent/dir does not exist"),
        (("deploy", "--name", "x"), "exactly one source"),
        (("deploy", "--image", "img:1", "--name", "x", "--env", "NOEQUALS"), "KEY=VALUE"),
    ],
)
def test_a_bad_call_prints_a_clear_error_and_exits_1(
    server: LiveServer, args: tuple[str, ...], message: str
) -> None:
    proc = server.cli(*args)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_wrong_key_or_an_unreachable_server_is_a_clear_error(server: LiveServer, tmp_path: Path) -> None:
    bad_key = server.cli("endpoints", key="ek_wrong")
    assert bad_key.returncode == 1 and "invalid API key" in bad_key.stderr and "401" in bad_key.stderr
    nowhere = server.cli("endpoints", url="http://127.0.0.1:9")
    assert nowhere.returncode == 1 and "cannot reach Ember" in nowhere.stderr
    assert "Traceback" not in bad_key.stderr + nowhere.stderr
    invalid = server.cli("deploy", str(handler_dir(tmp_path, "echo")), "--name", "bad", "--workers-max", "-1")
    assert invalid.returncode == 1 and "workersMax" in invalid.stderr
