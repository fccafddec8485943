"""The SDK's part of FlashBoot: asked through EMBER_MODULES_FD, a worker writes the names of the modules
it has imported (one a line, then `#end`) and closes the fd; the variable does not reach the handler."""

from __future__ import annotations

import os
import sys

import pytest

from ember.serverless.main import _modules_fd, report_modules


def test_report_lists_the_imported_modules_and_ends_with_a_marker() -> None:
    read_fd, write_fd = os.pipe()
    report_modules(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()  # EOF: the writer's fd was closed
    names = data.decode().split("\n")
    assert data.endswith(b"\n#end\n")
    assert "ember.serverless.main" in names and "os" in names
    assert set(names[:-2]) <= set(sys.modules)


def test_the_fd_is_taken_from_the_environment_once_and_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    monkeypatch.setenv("EMBER_MODULES_FD", str(write_fd))
    assert _modules_fd() == write_fd
    assert "EMBER_MODULES_FD" not in os.environ and not os.get_inheritable(write_fd)
    assert _modules_fd() is None
    os.close(read_fd)
    os.close(write_fd)


def test_a_bad_fd_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_MODULES_FD", "not-a-number")
    assert _modules_fd() is None
    report_modules(10_000)  # not open: nothing written, nothing raised
