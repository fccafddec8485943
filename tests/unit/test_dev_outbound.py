"""`ember dev` is a one-person dev box: its webhooks may reach receivers on this machine, unless
EMBER_OUTBOUND_ALLOW says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.cli.dev_cmds import dev_settings
from ember.core.outbound import refusal


def test_dev_webhooks_reach_loopback_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_OUTBOUND_ALLOW", raising=False)
    allow = dev_settings(tmp_path, "127.0.0.1", 8000, "ek_dev").outbound_networks
    assert refusal("127.0.0.2", allow) is None and refusal("::1", allow) is None
    assert refusal("10.0.0.1", allow) == "a private address"


def test_the_setting_still_decides_for_ember_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_OUTBOUND_ALLOW", "")
    allow = dev_settings(tmp_path, "127.0.0.1", 8000, "ek_dev").outbound_networks
    assert allow == () and refusal("127.0.0.1", allow) == "a loopback address"
