"""Shared test plumbing: which real services are present, and whether a missing one skips or fails.

`EMBER_TEST_REQUIRE` (comma-separated: postgres, docker, registry, …) turns a missing service from a
skip into a failure; `.ci/run` sets it so nothing is skipped in CI.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.support.docker_env"]


def required_services() -> set[str]:
    return {s.strip() for s in os.environ.get("EMBER_TEST_REQUIRE", "").split(",") if s.strip()}


def need(service: str, available: bool, why: str) -> None:
    """Skip (developer machine) or fail (CI, where EMBER_TEST_REQUIRE names it) when missing."""
    if available:
        return
    message = f"{service} is not available: {why}"
    if service in required_services() or "all" in required_services():
        pytest.fail(message + " (required by EMBER_TEST_REQUIRE)")
    pytest.skip(message)
