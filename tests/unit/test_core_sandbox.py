"""EMBER_SANDBOX's rule, as a table: who runs sandboxed, unsandboxed, or not at all."""

from __future__ import annotations

import pytest

from ember.core.sandbox import SandboxMode, choose, parse_mode, startup_warning

A, R, OFF = SandboxMode.AUTO, SandboxMode.REQUIRED, SandboxMode.OFF


@pytest.mark.parametrize(
    ("mode", "available", "admin", "sandboxed", "refused"),
    [
        (A, True, True, True, False),  # auto sandboxes everyone when bwrap is there
        (A, True, False, True, False),
        (A, False, True, False, False),  # the one-person dev box without bwrap
        (A, False, False, False, True),  # a tenant is never run unsandboxed
        (R, True, True, True, False),
        (R, False, True, False, True),
        (R, False, False, False, True),
        (OFF, True, True, False, False),  # off: honoured for the admin's workers
        (OFF, False, True, False, False),
        (OFF, True, False, True, False),  # ... never for another account's
        (OFF, False, False, False, True),
    ],
)
def test_who_runs_sandboxed(
    mode: SandboxMode, available: bool, admin: bool, sandboxed: bool, refused: bool
) -> None:
    choice = choose(mode, available=available, admin=admin)
    assert (choice.sandboxed, choice.refusal is not None) == (sandboxed, refused)
    if refused:
        assert "apt-get install bubblewrap" in (choice.refusal or "")


def test_one_warning_line_at_start_up_when_some_workers_run_unsandboxed() -> None:
    assert startup_warning(A, available=True) is None
    assert startup_warning(R, available=True) is None
    for mode, available in [(A, False), (R, False), (OFF, True)]:
        line = startup_warning(mode, available=available)
        assert line is not None and "\n" not in line
    assert "apt-get install bubblewrap" in (startup_warning(A, available=False) or "")


def test_mode_names() -> None:
    assert parse_mode(" Required ") is R
    with pytest.raises(ValueError, match="auto, required, off"):
        parse_mode("sometimes")
