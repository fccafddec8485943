"""The console's account pages in headless Chromium against a real server: `ember console` prints a link
that signs a browser in once; the billing page shows what a worker cost once the meter has billed it; a
tenant's endpoints, models, volumes, registry logins and billing show only its own, the admin's all."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import browser, page, screenshot, sign_in  # noqa: F401 - fixtures
from tests.support.fakehub import FakeHub
from tests.support.live import LiveServer, handler_dir, live_server, wait_for

PASSWORD = "console-must-never-show-this-pw"
USERNAME = "robot-console-user"


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    repos: dict[str, Any] = {
        "org/model-a": {"config.json": b'{"model_type": "a"}', "weights.bin": b"a" * 4096},
        "org/model-b": {"config.json": b'{"model_type": "b"}', "weights.bin": b"b" * 4096},
    }
    with FakeHub(repos) as h:
        yield h


@pytest.fixture(scope="module")
def server(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # Plain-directory volumes: a loop-mounted image would outlive a failed test's clean-up.
    env = {"EMBER_HF_ENDPOINT": hub.url, "EMBER_VOLUME_ENFORCE": "false"}
    with live_server(tmp_path_factory.mktemp("ember-console"), env=env) as s:
        yield s


def ember_console(server: LiveServer, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """`ember console` as the server's machine runs it: the admin key from EMBER_HOME/admin_key, unless
    `key` names an account's key."""
    env = server.cli_env(home=server.home)
    if key is None:
        env.pop("EMBER_API_KEY")
    else:
        env["EMBER_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "ember.cli.main", "console", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ember_console_prints_a_link_that_signs_a_browser_in_once(
    server: LiveServer,
    page: Any,  # noqa: F811
    browser: Any,  # noqa: F811
) -> None:
    assert (server.home / "admin_key").exists()
    out = ember_console(server)
    assert out.returncode == 0, out.stderr
    [link] = out.stdout.split()
    assert link.startswith(server.url + "/console/login?link="), out.stdout
    assert "works once" in out.stderr
    page.goto(link)
    assert page.url == server.url + "/console/"
    assert page.inner_text(".who") == "admin"
    screenshot(page, "console-cli-link")

    other = browser.new_context().new_page()
    other.goto(link)
    assert "used already or has expired" in other.inner_text("[role=alert]")
    other.goto(server.url + "/console/billing")
    assert other.url == server.url + "/console/login"
    other.context.close()


def test_a_tenants_link_signs_in_the_tenant(server: LiveServer, page: Any) -> None:  # noqa: F811
    key = server.new_account("link-tenant", credit=None)
    account_id = server.api("GET", "/v1/accounts/me", key).json()["id"]
    out = ember_console(server, key=key)
    assert out.returncode == 0, out.stderr
    page.goto(out.stdout.strip())
    assert page.inner_text(".who") == account_id


def test_billing_shows_the_cost_once_a_worker_has_run(
    server: LiveServer,
    page: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    ep = server.deploy("billed", handler_dir(tmp_path, "slow"), workersMax=1, idleTimeout=60)
    server.run_job(ep["id"], {"seconds": 2})  # billed per whole second: a job of a few ms may cost nothing

    sign_in(page, server.url, server.admin_key)
    row = f'#usage tr[data-series="usage:{ep["id"]}"]'

    def billed(days: int) -> str | None:
        """The endpoint's cost by the API, once its worker is idle and billed, if the page for the last
        `days` shows it too (the meter may still be catching up when the worker turns idle)."""
        if any(w["state"] != "IDLE" for w in server.workers(ep["id"])):
            return None
        usage = server.api("GET", "/v1/billing/usage", params={"endpointId": ep["id"]}).json()
        cost = "$" + usage["totalCost"]
        page.goto(server.url + f"/console/billing?days={days}")
        cell = page.query_selector(row + " .cost")
        shown = cell.inner_text() if cell is not None else None
        return cost if usage["items"] and shown == cost else None

    wait_for(lambda: billed(14), 60, interval_s=0.5, what="the job's cost on the billing page")
    assert "billed" in page.inner_text(row)
    assert page.query_selector(f'#usage-chart rect[data-series="usage:{ep["id"]}"]') is not None
    assert "admin" in page.inner_text("#accounts, #account-summary")
    screenshot(page, "console-billing")
    wait_for(lambda: billed(30), 30, interval_s=0.5, what="the job's cost over 30 days")
    assert server.api("DELETE", f"/v1/endpoints/{ep['id']}").status_code == 200


def make_tenant(server: LiveServer, name: str, model: str, tmp: Path) -> dict[str, str]:
    """An account with an endpoint, a volume, a registry login and a model pulled into the cache."""
    key = server.new_account(name)
    account_id = server.api("GET", "/v1/accounts/me", key).json()["id"]
    ep = server.deploy(f"{name}-ep", handler_dir(tmp / name, "echo"), key, workersMax=0)
    resp = server.api("POST", "/v1/networkvolumes", key, json={"name": f"{name}-vol", "size": 1})
    assert resp.status_code == 201, resp.text
    volume = resp.json()["id"]
    body = {"name": f"{name}-login", "username": USERNAME, "password": PASSWORD}
    resp = server.api("POST", "/v1/containerregistryauth", key, json=body)
    assert resp.status_code == 201, resp.text
    auth = resp.json()["id"]

    def pulled() -> bool:
        resp = server.api("POST", "/v1/models/pull", key, json={"name": model})
        assert resp.status_code in (200, 202), resp.text
        return resp.status_code == 200

    wait_for(pulled, 60, interval_s=0.3, what=f"{model} pulled")
    return {
        "key": key,
        "account": account_id,
        "endpoint": ep["id"],
        "volume": volume,
        "auth": auth,
        "model": model,
    }


def page_text(tab: Any, url: str) -> str:
    """The page at `url` (no redirect to sign-in), which shows no registry password or username."""
    tab.goto(url)
    assert tab.url == url, f"{url} led to {tab.url}"
    html: str = tab.content()
    assert PASSWORD not in html and USERNAME not in html
    return html


def test_a_tenant_sees_only_its_own_and_the_admin_sees_everyones(
    server: LiveServer,
    page: Any,  # noqa: F811
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    a = make_tenant(server, "tenant-a", "org/model-a", tmp_path)
    b = make_tenant(server, "tenant-b", "org/model-b", tmp_path)
    marks = ("endpoint", "volume", "auth", "model")
    pages = {
        "endpoint": "/console/",
        "volume": "/console/volumes",
        "auth": "/console/registry",
        "model": "/console/models",
    }

    sign_in(page, server.url, a["key"])
    for mark in marks:
        html = page_text(page, server.url + pages[mark])
        assert a[mark] in html, f"{pages[mark]} lacks A's {mark}"
        assert b[mark] not in html, f"{pages[mark]} shows B's {mark} to A"
        screenshot(page, f"console-tenant-{mark}")
    billing = page_text(page, server.url + "/console/billing")
    assert a["account"] in billing and b["account"] not in billing
    assert page.inner_text("#max-workers") == "10"  # $100 of credit: the $100+ row
    assert page.goto(server.url + f"/console/billing?account={b['account']}").status == 404

    admin = browser.new_context().new_page()
    sign_in(admin, server.url, server.admin_key)
    for mark in marks:
        html = page_text(admin, server.url + pages[mark])
        assert a[mark] in html and b[mark] in html, f"{pages[mark]} lacks a tenant's {mark} for the admin"
    screenshot(admin, "console-admin-volumes")
    page_text(admin, server.url + "/console/billing")
    accounts = admin.inner_text("#accounts")
    assert "tenant-a" in accounts and "tenant-b" in accounts
    screenshot(admin, "console-admin-billing")
    page_text(admin, server.url + f"/console/billing?account={b['account']}")
    assert admin.get_attribute("#account-summary", "data-account") == b["account"]
    admin.context.close()
