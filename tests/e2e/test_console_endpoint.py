"""The console's endpoint page in headless Chromium against a real server: an account deploys through
the API, runs a job, and watches (without reloading) its flex worker appear on the timeline and go
INITIALIZING, RUNNING, IDLE, the job in the jobs list and its printed line in the log tail; it changes
workersMax in the settings form (the API's record follows; a bad value shows the API's own error),
rolls back a release, and finds the cost on the billing page. Another account gets a 404 page for the
endpoint and its job, by URL too. Screenshots go to the CI artifacts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.support.browser import browser, page, screenshot, sign_in  # noqa: F401 - fixtures
from tests.support.live import FINAL_STATES, LiveServer, handler_dir, wait_for

NAME = "console-e2e"

LANES_JS = """() => Object.fromEntries([...document.querySelectorAll('#timeline g.lane')].map(
  g => [g.dataset.worker, [...g.querySelectorAll('rect.seg')].map(r => r.dataset.state)]))"""


@pytest.fixture(scope="module")
def alice(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An account with one endpoint of the `prints_marker` handler: no worker until a job comes."""
    key = server.new_account("alice")
    src = handler_dir(tmp_path_factory.mktemp("src"), "prints_marker")
    ep = server.deploy(NAME, src, key=key, workersMin=0, workersMax=1, idleTimeout=600)
    return {"key": key, "ep": ep, "url": f"{server.url}/console/endpoints/{ep['id']}"}


@pytest.fixture
def signed_in(server: LiveServer, page: Any, alice: dict[str, Any]) -> Iterator[Any]:  # noqa: F811
    sign_in(page, server.url, alice["key"])
    page.goto(alice["url"])
    yield page


def in_order(seen: Sequence[str], wanted: Sequence[str]) -> bool:
    """Whether `wanted` occurs in `seen` in this order (other states may come between)."""
    rest = iter(seen)
    return all(state in rest for state in wanted)


def run_job(server: LiveServer, key: str, endpoint_id: str, job_input: dict[str, Any]) -> str:
    resp = server.api("POST", f"/v2/{endpoint_id}/run", key, json={"input": job_input})
    assert resp.status_code == 200, resp.text
    job_id = str(resp.json()["id"])

    def final() -> str | None:
        status = server.api("GET", f"/v2/{endpoint_id}/status/{job_id}", key).json()["status"]
        return status if status in FINAL_STATES else None

    assert wait_for(final, 120, 0.2, what=f"job {job_id}\n{server.log()[-3000:]}") == "COMPLETED"
    return job_id


def record(server: LiveServer, key: str, endpoint_id: str) -> dict[str, Any]:
    resp = server.api("GET", f"/v1/endpoints/{endpoint_id}", key)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_a_job_shows_its_worker_on_the_timeline_and_its_line_in_the_log_tail(
    server: LiveServer, signed_in: Any, alice: dict[str, Any]
) -> None:
    tab = signed_in
    tab.goto(alice["url"] + "?span=5m")  # zoomed in: a job of seconds is wide enough to see
    assert tab.inner_text("h1").startswith(NAME)
    assert tab.locator("#timeline g.lane").count() == 0  # workersMin 0: nothing runs yet
    screenshot(tab, "console-endpoint-empty")
    marker = "marker-" + uuid.uuid4().hex[:10]
    job_id = run_job(server, alice["key"], alice["ep"]["id"], {"marker": marker, "seconds": 2})

    # The page refreshes itself: no reload from here on.
    def settled() -> dict[str, list[str]] | None:
        lanes: dict[str, list[str]] = tab.evaluate(LANES_JS)
        ok = len(lanes) == 1 and in_order(next(iter(lanes.values())), ["INITIALIZING", "RUNNING", "IDLE"])
        return lanes if ok else None

    lanes = wait_for(settled, 60, 0.25, what="the worker's lane going INITIALIZING, RUNNING, IDLE")
    [(worker_id, states)] = lanes.items()
    assert states[-1] == "IDLE"
    lane = tab.locator(f'#timeline g.lane[data-worker="{worker_id}"]')
    assert lane.get_attribute("data-state") == "IDLE"
    titles = lane.locator("rect.seg title").all_text_contents()
    assert any(t.startswith("RUNNING") and "took a job" in t for t in titles), titles

    row = tab.locator(f'#jobs-list tr.job[data-job="{job_id}"]')
    row.wait_for()
    wait_for(lambda: row.get_attribute("data-status") == "COMPLETED", 30, 0.25, what="COMPLETED row")
    assert row.get_attribute("data-worker") == worker_id

    tail = tab.locator("#log-tail")
    wait_for(lambda: f"handled {marker}" in tail.inner_text(), 60, 0.25, what="the job's line in the tail")
    assert worker_id in tail.inner_text()
    screenshot(tab, "console-endpoint-after-a-job")

    row.locator("a").click()
    tab.wait_for_url(f"{alice['url']}/jobs/{job_id}")
    steps = tab.locator("#job-steps li").evaluate_all("els => els.map(e => e.dataset.step)")
    assert steps == ["queued", "taken", "done"]
    assert f"by {worker_id}" in tab.inner_text("#job-steps")
    assert tab.get_attribute("#job", "data-status") == "COMPLETED"
    assert marker in tab.inner_text("#job-output")
    screenshot(tab, "console-job")


def test_settings_change_the_api_record_and_show_the_apis_error(
    server: LiveServer, signed_in: Any, alice: dict[str, Any]
) -> None:
    tab = signed_in
    endpoint_id = alice["ep"]["id"]
    tab.fill("input[name=workersMax]", "3")
    tab.click("#settings-form button[type=submit]")
    wait_for(lambda: tab.inner_text("#settings-message") == "Saved.", 30, 0.1, what="Saved.")
    assert record(server, alice["key"], endpoint_id)["workersMax"] == 3

    tab.fill("input[name=workersMax]", "lots")
    tab.click("#settings-form button[type=submit]")
    alert = tab.locator("#settings-message[role=alert]")
    alert.wait_for()
    expected = server.api("PATCH", f"/v1/endpoints/{endpoint_id}", alice["key"], json={"workersMax": "lots"})
    assert expected.status_code == 400
    assert alert.inner_text() == expected.json()["error"]
    assert record(server, alice["key"], endpoint_id)["workersMax"] == 3
    screenshot(tab, "console-endpoint-settings-error")


def test_a_release_is_rolled_back_from_the_page(
    server: LiveServer, signed_in: Any, alice: dict[str, Any]
) -> None:
    tab = signed_in
    endpoint_id = alice["ep"]["id"]
    resp = server.api("PATCH", f"/v1/endpoints/{endpoint_id}", alice["key"], json={"env": {"FLAVOUR": "two"}})
    assert resp.status_code == 200 and resp.json()["release"] == 2, resp.text
    serving = tab.locator("#releases-list tr.release[data-serving=yes]")
    wait_for(lambda: serving.get_attribute("data-release") == "2", 30, 0.25, what="release 2 serving")
    tab.once("dialog", lambda dialog: dialog.accept())
    tab.click("button[data-rollback='1']")
    wait_for(lambda: tab.inner_text("#release-message") == "Now serving release 1.", 30, 0.1, what="rollback")
    assert record(server, alice["key"], endpoint_id)["release"] == 1
    wait_for(lambda: serving.get_attribute("data-release") == "1", 30, 0.25, what="release 1 serving")
    screenshot(tab, "console-endpoint-rolled-back")


def test_another_account_never_sees_the_endpoint(
    server: LiveServer,
    browser: Any,  # noqa: F811
    alice: dict[str, Any],
) -> None:
    job_id = run_job(server, alice["key"], alice["ep"]["id"], {"marker": "private"})
    bob = server.new_account("bob")
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        tab = context.new_page()
        sign_in(tab, server.url, bob)
        assert alice["ep"]["id"] not in tab.content() and NAME not in tab.content()
        for url in (alice["url"], f"{alice['url']}/jobs/{job_id}"):
            resp = tab.goto(url)
            assert resp is not None and resp.status == 404, url
            assert "was not found" in tab.inner_text("[role=alert]")
            assert NAME not in tab.content()
        screenshot(tab, "console-endpoint-other-account")
        status = tab.evaluate(
            f"fetch('/v1/endpoints/{alice['ep']['id']}', {{headers: {{'x-ember-console': '1'}}}})"
            ".then(r => r.status)"
        )
        assert status == 404
    finally:
        context.close()


def test_the_billing_page_shows_the_endpoints_cost(
    server: LiveServer,
    page: Any,  # noqa: F811
    alice: dict[str, Any],
) -> None:
    endpoint_id = alice["ep"]["id"]
    # A flex worker bills whole seconds while starting or running: a job of a few ms may cost nothing.
    run_job(server, alice["key"], endpoint_id, {"marker": "billed", "seconds": 2})
    sign_in(page, server.url, alice["key"])
    cell = page.locator(f'#usage tr[data-series="usage:{endpoint_id}"] td.cost')

    def billed() -> str | None:
        """The endpoint's cost by the API once its worker is idle (billed up to date), when the billing
        page shows the same."""
        if any(w["state"] != "IDLE" for w in server.workers(endpoint_id, alice["key"])):
            return None
        usage = server.api("GET", "/v1/billing/usage", alice["key"], params={"endpointId": endpoint_id})
        cost = "$" + usage.json()["totalCost"]
        page.goto(server.url + "/console/billing")
        shown = cell.inner_text() if cell.count() else None
        return cost if usage.json()["items"] and shown == cost else None

    cost = wait_for(billed, 60, 0.5, what="the endpoint's cost on the billing page")
    assert float(cost[1:]) > 0
    screenshot(page, "console-billing-tenant")
