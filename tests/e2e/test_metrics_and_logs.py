"""A real server with EMBER_METRICS_TOKEN, EMBER_LOG_FORMAT=json and EMBER_ACCESS_LOG=1: after a scripted
run (jobs completed, one failed by tests/handlers/raises.py, one left queued) `/metrics`, parsed with
prometheus-client's parser, shows those jobs and the workers' states; it is a 401 without the token and
refused to a tenant's key; every log line the server wrote is a JSON object, with the ids it concerns."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.live import FINAL_STATES, LiveServer, handler_dir, live_server, wait_for

TOKEN = "metrics-e2e-" + "0" * 16
TEXT_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"EMBER_METRICS_TOKEN": TOKEN, "EMBER_LOG_FORMAT": "json", "EMBER_ACCESS_LOG": "1"}
    with live_server(tmp_path_factory.mktemp("ember-home"), env=env) as s:
        yield s


@pytest.fixture(scope="module")
def scripted(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three jobs completed on `echo`, one failed on `raises`, one queued on `parked` (no workers)."""
    tmp = tmp_path_factory.mktemp("handlers")
    echo = server.deploy("echo", handler_dir(tmp, "echo"), workersMin=1, workersMax=1)
    raises = server.deploy("raises", handler_dir(tmp, "raises"), workersMin=1, workersMax=1)
    parked = server.deploy("parked", handler_dir(tmp, "noop"), workersMin=0, workersMax=0)
    for n in range(3):
        server.run_job(echo["id"], {"n": n})
    failed = server.api("POST", f"/v2/{raises['id']}/run", json={"input": {}}).json()["id"]

    def final() -> dict[str, Any] | None:
        rec: dict[str, Any] = server.api("GET", f"/v2/{raises['id']}/status/{failed}").json()
        return rec if rec["status"] in FINAL_STATES else None

    assert wait_for(final, 90, what="the raising job")["status"] == "FAILED"
    assert server.api("POST", f"/v2/{parked['id']}/run", json={"input": {}}).status_code == 200
    return {"echo": echo["id"], "raises": raises["id"], "parked": parked["id"], "failed": failed}


def scrape(server: LiveServer, key: str = TOKEN) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def test_metrics_show_the_jobs_and_worker_states_of_the_run(
    server: LiveServer, scripted: dict[str, Any]
) -> None:
    m = scrape(server)

    def jobs(endpoint: str, status: str) -> float:
        labels = frozenset({"endpoint_id": scripted[endpoint], "status": status}.items())
        return m.get(("ember_jobs_finished_total", labels), 0.0)

    assert jobs("echo", "COMPLETED") == 3 and jobs("echo", "FAILED") == 0
    assert jobs("raises", "FAILED") == 1 and jobs("raises", "COMPLETED") == 0
    assert m[("ember_jobs_queued", frozenset({"endpoint_id": scripted["parked"]}.items()))] == 1
    assert m[("ember_job_execution_seconds_count", frozenset({"endpoint_id": scripted["echo"]}.items()))] == 3

    def workers_agree() -> bool:
        """The metrics' live workers by (endpoint, state, type) are those the API lists (polled: a
        worker may change state between the two reads)."""
        shown = Counter(
            {
                (dict(labels)["endpoint_id"], dict(labels)["state"], dict(labels)["type"]): int(v)
                for (name, labels), v in scrape(server).items()
                if name == "ember_workers" and v
            }
        )
        listed = Counter(
            (ep, w["state"], w["type"])
            for ep in (scripted["echo"], scripted["raises"], scripted["parked"])
            for w in server.workers(ep)
        )
        return shown == listed and listed[(scripted["echo"], "IDLE", "ACTIVE")] == 1

    wait_for(workers_agree, 30, what="/metrics' workers to match the API's")


def test_metrics_refuse_a_missing_token_and_a_tenants_key(server: LiveServer) -> None:
    resp = httpx.get(server.url + "/metrics", timeout=30)
    assert resp.status_code == 401 and "token" in resp.json()["error"]
    tenant = server.new_account("metrics-tenant", credit=None)
    resp = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {tenant}"}, timeout=30)
    assert resp.status_code in (401, 403) and resp.json()["error"]
    assert scrape(server, key=server.admin_key)  # the admin's key reads it too


def test_log_lines_are_json_objects_carrying_the_ids(server: LiveServer, scripted: dict[str, Any]) -> None:
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    assert not [line for line in lines if TEXT_LOG_LINE.match(line)], "text log lines in JSON mode"
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    transitions = [r for r in records if r["message"].startswith("worker_transition")]
    assert transitions and all(r["worker_id"] and r["endpoint_id"] for r in transitions)
    assert any(r.get("endpoint_id") == scripted["echo"] for r in transitions)
    status_path = f"/v2/{scripted['raises']}/status/{scripted['failed']}"
    access = [r for r in records if r["logger"] == "uvicorn.access" and r.get("path") == status_path]
    assert access and access[0]["job_id"] == scripted["failed"]
    assert access[0]["endpoint_id"] == scripted["raises"] and access[0]["status"] == 200
