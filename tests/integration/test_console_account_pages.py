"""The console's account pages through the real app and store (SQLite and PostgreSQL), without a browser:
the ledger summed per endpoint, volume and day; the billing page showing what the meter billed, day by
day on a manual clock; each tenant's pages showing its own endpoints, volumes, registry logins and usage
and nothing of another's, the admin's everyone's; bad parameters answered with a 400 or 404."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx

from ember.build.archive import pack
from ember.core.billing import DEFAULT_GPU_MICROS_PER_S
from ember.core.money import format_dollars
from ember.store.accounts import Charge, DayUsage
from ember.store.facade import Store
from ember.store.volumes import VolumeCharge
from tests.support.harness import ADMIN_KEY, Harness, build

DAY = 86400
RATE = DEFAULT_GPU_MICROS_PER_S["TEST_GPU"]
PASSWORD = "never-on-a-console-page"


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def charge(account: str, endpoint: str, at: float, seconds: int, micros: int) -> Charge:
    return Charge(
        account, endpoint, "wk-" + endpoint, "RUNNING", "FLEX", None, seconds, micros, at, at + seconds
    )


def test_usage_by_day_sums_per_endpoint_volume_and_utc_day(store: Store) -> None:
    day0 = 20_000 * DAY  # a UTC midnight
    for account in ("acct-a", "acct-b"):
        store.accounts.create(id=account, name=account, is_admin=False, balance_micros=0, now=day0)
    store.endpoints.create(
        id="ep-a1", account_id="acct-a", name="one", spec_json="{}", release_key="", now=day0
    )
    store.endpoints.create(
        id="ep-b1", account_id="acct-b", name="bee", spec_json="{}", release_key="", now=day0
    )
    store.endpoints.delete("ep-a1", day0 + 5)  # its usage keeps its name
    store.volumes.create(id="vol-a", account_id="acct-a", name="data", size_gb=1, now=day0)
    store.accounts.record_charges(
        [
            charge("acct-a", "ep-a1", day0 - 10, 5, 50),  # the day before: outside the window
            charge("acct-a", "ep-a1", day0 + 10, 3, 30),
            charge("acct-a", "ep-a1", day0 + 3600, 4, 40),
            charge("acct-a", "ep-a1", day0 + DAY - 1, 2, 20),  # starts before midnight: day 0
            charge("acct-a", "ep-a1", day0 + DAY + 1, 7, 70),
            charge("acct-b", "ep-b1", day0 + 100, 9, 90),
        ],
        day0 + 2 * DAY,
    )
    store.volumes.save_meter(
        "vol-a", day0 + 60, 0, VolumeCharge("acct-a", "vol-a", 1, 60, 6, day0, day0 + 60)
    )

    def key(u: DayUsage) -> tuple[str, str, int]:
        return (u.kind, u.resource_id, u.day - 20_000)

    mine = {
        key(u): (u.name, u.seconds, u.amount_micros) for u in store.accounts.usage_by_day(["acct-a"], day0)
    }
    assert mine == {
        ("usage", "ep-a1", 0): ("one", 9, 90),
        ("usage", "ep-a1", 1): ("one", 7, 70),
        ("volume", "vol-a", 0): ("data", 60, 6),
    }
    everyone = store.accounts.usage_by_day(None, day0)
    assert {u.account_id for u in everyone} == {"acct-a", "acct-b"}
    assert store.accounts.usage_by_day(["acct-b"], day0) == [
        DayUsage("acct-b", "usage", "ep-b1", "bee", 20_000, 9, 90)
    ]
    assert store.accounts.usage_by_day(["acct-nobody"], day0) == []


# ---- pages -------------------------------------------------------------------------------------------
async def browser_for(h: Harness, key: str) -> httpx.AsyncClient:
    """A client signed in to the console with `key` (its session cookie, no API key)."""
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app), base_url="http://ember.test")
    resp = await client.post("/console/login", data={"key": key})
    assert resp.status_code == 303 and resp.headers["location"] == "/console/", resp.text
    return client


async def page(client: httpx.AsyncClient, path: str) -> str:
    resp = await client.get(path)
    assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
    assert PASSWORD not in resp.text
    return resp.text


def cost_cell(html: str, series: str) -> str:
    row = re.search(rf'<tr data-series="{re.escape(series)}">(.*?)</tr>', html, re.S)
    assert row is not None, f"no usage row for {series}"
    cell = re.search(r'<td class="cost">([^<]*)</td>', row.group(1))
    assert cell is not None
    return cell.group(1)


async def a_billed_job(h: Harness, endpoint_id: str, running_s: float) -> None:
    """One job on a scaled-to-zero flex endpoint: 3 s starting, `running_s` running, then idle and
    stopped, metered."""
    job = (await h.api.post(f"/v2/{endpoint_id}/run", json={"input": {}})).json()
    await h.tick()
    [worker] = [w for w in await h.workers(endpoint_id) if w["state"] != "STOPPED"]
    h.clock.advance(3)
    assert (await h.take(endpoint_id, worker["id"])).json()["id"] == job["id"]
    h.clock.advance(running_s)
    await h.done(endpoint_id, worker["id"], job["id"], {"output": {}})
    h.clock.advance(5)
    await h.ping(endpoint_id, worker["id"])
    await h.tick()
    await h.meter()


def test_billing_shows_what_the_meter_billed_day_by_day(tmp_path: Path, store: Store) -> None:
    async def scenario() -> None:
        h = build(tmp_path, store=store)
        ep = await h.deploy("daily", gpuTypeIds=["TEST_GPU"], workersMin=0, workersMax=1, idleTimeout=5)
        await a_billed_job(h, ep["id"], 10)
        h.clock.advance(DAY)
        await a_billed_job(h, ep["id"], 20)
        admin = await browser_for(h, ADMIN_KEY)
        html = await page(admin, "/console/billing")
        series = f"usage:{ep['id']}"
        total = "$" + (await h.api.get("/v1/billing/usage")).json()["totalCost"]
        assert total == "$" + format_dollars((13 + 23) * RATE)
        assert cost_cell(html, series) == total
        bars = re.findall(rf'<rect class="bar" data-series="{series}" data-day="([0-9-]+)"', html)
        assert len(bars) == 2 and bars[0] < bars[1], bars
        assert (
            f"· ${format_dollars(13 * RATE)} · 13 s" in html
            and f"· ${format_dollars(23 * RATE)} · 23 s" in html
        )
        assert 'id="max-workers">60<' in html  # the admin's $1,000: the $900+ row

        h.clock.advance(13 * DAY)  # the first day leaves the 14-day window, not the 30-day one
        await admin.aclose()
        admin = await browser_for(h, ADMIN_KEY)  # the session ended after 12 hours
        assert cost_cell(await page(admin, "/console/billing"), series) == "$" + format_dollars(23 * RATE)
        assert cost_cell(await page(admin, "/console/billing?days=30"), series) == total
        await admin.aclose()
        await h.api.aclose()

    run(scenario())


async def tenant(h: Harness, name: str, src: Path) -> dict[str, str]:
    """An account (credited $150) with an endpoint, a volume, a registry login and some usage."""
    resp = await h.api.post("/v1/accounts", json={"name": name})
    assert resp.status_code == 201, resp.text
    account, key = resp.json()["id"], resp.json()["apiKey"]
    assert (await h.api.post(f"/v1/accounts/{account}/credits", json={"amount": "150"})).status_code == 200
    auth = {"Authorization": f"Bearer {key}"}
    (src / name).mkdir(parents=True)
    (src / name / "handler.py").write_text("def handler(job):\n    return job['input']\n")
    body = pack(src / name)
    resp = await h.api.post("/v1/sources", content=body, headers={**auth, "Content-Type": "application/gzip"})
    assert resp.status_code == 201, resp.text
    resp = await h.api.post(
        "/v1/endpoints",
        json={"name": f"{name}-ep", "sourceId": resp.json()["id"], "workersMax": 0},
        headers=auth,
    )
    assert resp.status_code == 201, resp.text
    endpoint = resp.json()["id"]
    resp = await h.api.post("/v1/networkvolumes", json={"name": f"{name}-vol", "size": 1}, headers=auth)
    assert resp.status_code == 201, resp.text
    volume = resp.json()["id"]
    login = {"name": f"{name}-login", "username": f"{name}-robot", "password": PASSWORD}
    resp = await h.api.post("/v1/containerregistryauth", json=login, headers=auth)
    assert resp.status_code == 201, resp.text
    now = h.clock.now()
    h.store.accounts.record_charges([charge(account, endpoint, now - 60, 42, 4200)], now)
    return {"account": account, "key": key, "endpoint": endpoint, "volume": volume, "auth": resp.json()["id"]}


PAGES = ("/console/", "/console/volumes", "/console/registry", "/console/billing")


def test_a_tenant_sees_only_its_own_rows_and_the_admin_sees_all(tmp_path: Path, store: Store) -> None:
    async def scenario() -> None:
        h = build(tmp_path, store=store, volume_enforce=False)  # no loop mounts to clean up
        a = await tenant(h, "alpha", tmp_path / "src")
        b = await tenant(h, "bravo", tmp_path / "src")
        marks = ("endpoint", "volume", "auth")
        for me, other in ((a, b), (b, a)):
            client = await browser_for(h, me["key"])
            html = "".join([await page(client, p) for p in PAGES])
            for mark in ("account", *marks):
                assert me[mark] in html, mark
                assert other[mark] not in html, f"{me['account']} sees {other['account']}'s {mark}"
            assert "robot" not in html  # registry usernames are not shown either
            billing = await page(client, "/console/billing")
            assert cost_cell(billing, f"usage:{me['endpoint']}") == "$0.004200"
            assert 'id="max-workers">10<' in billing  # $150 - $0.0042: the $100+ row
            resp = await client.get(f"/console/billing?account={other['account']}")
            assert resp.status_code == 404 and other["account"] in resp.json()["error"]
            await client.aclose()

        admin = await browser_for(h, ADMIN_KEY)
        html = "".join([await page(admin, p) for p in PAGES])
        for mark in ("account", *marks):
            assert a[mark] in html and b[mark] in html, mark
        billing = await page(admin, "/console/billing")
        assert 'id="accounts"' in billing and "alpha" in billing and "bravo" in billing
        assert cost_cell(billing, f"usage:{a['endpoint']}") == "$0.004200"
        one = await page(admin, f"/console/billing?account={b['account']}")
        assert f'data-account="{b["account"]}"' in one and a["endpoint"] not in one
        await admin.aclose()
        await h.api.aclose()

    run(scenario())


def test_bad_billing_parameters_are_a_4xx_saying_what_was_wrong(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        admin = await browser_for(h, ADMIN_KEY)
        resp = await admin.get("/console/billing?days=7")
        assert resp.status_code == 400
        assert resp.json()["problems"][0]["field"] == "days"
        resp = await admin.get("/console/billing?account=acct-nobody")
        assert resp.status_code == 404 and "acct-nobody" in resp.json()["error"]
        signed_out = httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app), base_url="http://ember.test")
        for path in ("/console/billing", "/console/models", "/console/volumes", "/console/registry"):
            resp = await signed_out.get(path)
            assert resp.status_code == 303 and resp.headers["location"] == "/console/login", path
        await signed_out.aclose()
        await admin.aclose()
        await h.api.aclose()

    run(scenario())
