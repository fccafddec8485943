"""Headless Chromium (Debian's `chromium`) driven by Playwright, for the console's end-to-end tests.

`browser` is one Chromium per module; `page` a fresh context (no cookies) per test. Screenshots go to
`EMBER_TEST_ARTIFACTS` (default `test-artifacts/` in the repository), which CI keeps as artifacts.
Missing Chromium or Playwright skips, or fails where EMBER_TEST_REQUIRE names `chromium`."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need

CHROMIUM = os.environ.get("EMBER_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(
    os.environ.get("EMBER_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("chromium", False, "the playwright package is not installed")
    need("chromium", bool(shutil.which(CHROMIUM)), f"{CHROMIUM} not found (apt-get install chromium)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as a CI artifact and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, base_url: str, key: str) -> None:
    """Sign in through the console's sign-in form with an API key."""
    page.goto(base_url + "/console/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url(base_url + "/console/")
