"""`ember registry add|ls|rm` and `ember deploy --registry-auth` against a live server: the account's
registry logins by name or id, the password read without echo and never printed."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.support.live import LiveServer

PASSWORD = "cli-Pa55word-never-printed"
IMAGE = "127.0.0.1:5999/team/private-worker:v1"


def ember(server: LiveServer, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The `ember` CLI against `server`, with no controlling terminal: a hidden prompt reads stdin."""
    return server.cli(*args, new_session=True, **kw)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert PASSWORD not in proc.stdout + proc.stderr
    return proc.stdout


def listing(server: LiveServer) -> list[dict[str, Any]]:
    return json.loads(ok(ember(server, "registry", "ls", "--json")))  # type: ignore[no-any-return]


def test_add_ls_deploy_and_rm_a_registry_auth(server: LiveServer) -> None:
    added = ember(
        server, "registry", "add", "team-ghcr", "--username", "bot", "--password-stdin", stdin=PASSWORD
    )
    auth_id = ok(added).strip()
    assert auth_id.startswith("cra-") and "\n" not in auth_id  # stdout is the id alone, for scripts
    assert listing(server) == [{"id": auth_id, "name": "team-ghcr"}]
    table = ok(ember(server, "registry", "ls"))
    assert "team-ghcr" in table and auth_id in table and "bot" not in table

    record = json.loads(
        ok(
            ember(
                server,
                "deploy",
                "--image",
                IMAGE,
                "--name",
                "private",
                "--registry-auth",
                "team-ghcr",
                "--json",
            )
        )
    )
    assert record["containerRegistryAuthId"] == auth_id
    again = json.loads(
        ok(
            ember(
                server, "deploy", "--image", IMAGE, "--name", "private", "--registry-auth", auth_id, "--json"
            )
        )
    )
    assert again["id"] == record["id"] and again["containerRegistryAuthId"] == auth_id

    refused = ember(server, "registry", "rm", "team-ghcr")
    assert refused.returncode == 1 and "endpoint private" in refused.stderr and "HTTP 409" in refused.stderr
    cleared = json.loads(
        ok(ember(server, "deploy", "--image", IMAGE, "--name", "private", "--registry-auth", "", "--json"))
    )
    assert cleared["containerRegistryAuthId"] is None
    assert f"{auth_id} deleted" in ok(ember(server, "registry", "rm", "team-ghcr"))
    assert listing(server) == []
    ok(ember(server, "delete", "private"))


def test_the_password_prompt_does_not_echo_and_errors_are_one_clear_line(server: LiveServer) -> None:
    prompted = ember(server, "registry", "add", "prompted", "-u", "bot", stdin=PASSWORD + "\n")
    auth_id = ok(prompted).strip()
    assert auth_id.startswith("cra-") and "Password" in prompted.stderr
    assert any(a["id"] == auth_id for a in listing(server))

    duplicate = ember(server, "registry", "add", "prompted", "-u", "bot", "--password-stdin", stdin=PASSWORD)
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    assert PASSWORD not in duplicate.stdout + duplicate.stderr
    empty = ember(server, "registry", "add", "empty", "-u", "bot", "--password-stdin", stdin="\n")
    assert empty.returncode == 1 and "password" in empty.stderr

    unknown = ember(server, "deploy", "--image", IMAGE, "--name", "nope", "--registry-auth", "no-such-login")
    assert unknown.returncode == 1 and "no registry auth 'no-such-login'" in unknown.stderr
    assert "nope" not in {e["name"] for e in json.loads(ok(ember(server, "endpoints", "--json")))}
    missing = ember(server, "registry", "rm", "cra-0000")
    assert missing.returncode == 1 and "no registry auth" in missing.stderr
    ok(ember(server, "registry", "rm", auth_id))
