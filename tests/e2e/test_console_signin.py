"""Signing in to the web console in headless Chromium: with an API key, with a one-time link (once
only), and out again; a page asked for before signing in leads to the sign-in form."""

from __future__ import annotations

from typing import Any

from tests.support.browser import browser, page, screenshot, sign_in  # noqa: F401 - fixtures
from tests.support.live import LiveServer


def test_signs_in_with_a_key_and_out_again(server: LiveServer, page: Any) -> None:  # noqa: F811
    page.goto(server.url + "/")
    assert page.url == server.url + "/console/login"
    page.fill("#key", "ek_not_a_key")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text("[role=alert]")
    sign_in(page, server.url, server.admin_key)
    assert page.inner_text("h1") == "Endpoints"
    screenshot(page, "console-signed-in")
    page.click("text=Sign out")
    page.wait_for_url(server.url + "/console/login")
    page.goto(server.url + "/console/")
    assert page.url == server.url + "/console/login"


def test_one_time_link_signs_in_once(server: LiveServer, page: Any, browser: Any) -> None:  # noqa: F811
    resp = server.api("POST", "/v1/console/links")
    assert resp.status_code == 200, resp.text
    link = server.url + resp.json()["path"]
    page.goto(link)
    assert page.url == server.url + "/console/"
    other = browser.new_context().new_page()
    other.goto(link)
    assert "used already or has expired" in other.inner_text("[role=alert]")
    other.context.close()


def test_the_api_takes_the_cookie_only_beside_the_console_header(server: LiveServer, page: Any) -> None:  # noqa: F811
    sign_in(page, server.url, server.admin_key)
    bare = page.evaluate("fetch('/v1/endpoints').then(r => r.status)")
    assert bare == 401
    with_header = page.evaluate(
        "fetch('/v1/endpoints', {headers: {'x-ember-console': '1'}}).then(r => r.status)"
    )
    assert with_header == 200
