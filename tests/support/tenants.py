"""Probes the hostile-tenant tests share, on every backend: account B's `exec` of a shell script, the
check that nothing of A's or the server's leaked into what B saw, and B's worker key posting a forged
result to A's job. `tenants` is the test's scenario: keys, endpoints, B's worker, A's secrets."""

from __future__ import annotations

import json
from typing import Any

from tests.support.live import LiveServer, wait_for


def run_as(server: LiveServer, key: str, endpoint_id: str, job_input: dict[str, Any]) -> dict[str, Any]:
    """The output of a runsync job sent with `key`, which must complete."""
    resp = server.api("POST", f"/v2/{endpoint_id}/runsync", key, json={"input": job_input}, timeout=120)
    assert resp.status_code == 200 and resp.json()["status"] == "COMPLETED", resp.text
    return dict(resp.json()["output"])


def assert_hostile_handler_contained(server: LiveServer, tenants: dict[str, Any]) -> dict[str, Any]:
    """B's handler (tests/handlers/hostile.py) reads the server's and A's files, writes where it must
    not, and lists the processes it sees: it reads, writes and sees nothing of the server's or A's, runs
    as a uid of its own, and has its own volume. Returns its report for the caller's own checks."""
    home = server.home
    probe = {
        "read": tenants["targets"],
        "write": [str(home / "models" / "x"), str(home / "ember.db"), str(tenants["a_volume"]), "/usr/x"],
        "volume": "mallory's own",
    }
    out = run_as(server, tenants["key_b"], tenants["ep_b"], probe)
    assert_nothing_leaked(json.dumps(out), tenants)
    reads = out["reads"]
    # EMBER_HOME itself is only the empty skeleton of the path to B's own source snapshot.
    assert set(reads.pop(str(home)).get("listed", [])) <= {"sources", "venvs"}
    assert all("error" in result for result in reads.values()), reads
    assert all("error" in result for result in out["writes"].values()), out["writes"]
    assert out["uid"] != 0
    # A pid namespace of its own: pid 1 (the sandbox's init) and few processes, no environment of A's.
    assert "1" in out["processes"] and len(out["processes"]) < 20, out["processes"]
    assert (out["volume_path"], out["volume"]) == ("/runpod-volume", "mallory's own")
    assert tenants["a_volume"].read_text() == "alice-secret"  # A's data is intact
    return out


def assert_nothing_leaked(text: str, tenants: dict[str, Any]) -> None:
    for secret in tenants["secrets"]:
        assert secret not in text


def exec_as_b(server: LiveServer, tenants: dict[str, Any], lines: list[str]) -> str:
    """Run `lines` as one shell script in B's worker through B's `exec`; its output, checked for leaks."""
    resp = server.api(
        "POST",
        f"/v1/workers/{tenants['worker_b']}/exec",
        tenants["key_b"],
        json={"command": ["sh", "-c", "; ".join(lines)]},
    )
    assert resp.status_code == 200, resp.text
    output = str(resp.json()["output"])
    assert_nothing_leaked(output, tenants)
    return output


def assert_b_cannot_post_to_a_job(server: LiveServer, tenants: dict[str, Any], b_key: str) -> None:
    """B's worker key posts a result for A's job, through A's endpoint (naming A's worker, or B's) and
    through B's own: every post is refused, and A's job ends with A's own result."""
    resp = server.api("POST", f"/v2/{tenants['ep_a']}/run", tenants["key_a"], json={"input": {"read": "x"}})
    job_id = resp.json()["id"]
    forged = {"output": {"text": "forged"}}
    routes = [(tenants["ep_a"], tenants["worker_a"]), (tenants["ep_a"], tenants["worker_b"])]
    routes.append((tenants["ep_b"], tenants["worker_b"]))
    for endpoint, worker in routes:
        answer = server.api("POST", f"/v2/{endpoint}/job-done/{worker}/{job_id}", b_key, json=forged)
        assert answer.status_code in (401, 403, 404, 409), (endpoint, worker, answer.text)

    def final() -> dict[str, Any] | None:
        record = server.api("GET", f"/v2/{tenants['ep_a']}/status/{job_id}", tenants["key_a"]).json()
        return record if record["status"] in ("COMPLETED", "FAILED") else None

    record = wait_for(final, 120, what="A's job to finish")
    assert record["status"] == "COMPLETED" and record["output"]["text"] == "alice-secret"
