"""/v1/containerregistryauth through the real app and store (SQLite): create, list, get and delete an
account's registry logins, their use by templates and endpoints, and the credential a Docker worker's
image is pulled with (the account's auth before the host's `ember registry login`). The password
appears in no response, error or log, and is kept encrypted in the database."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ember.app import create_app
from ember.backends.memory import MemoryBackend
from ember.build.registry import CredentialStore, Sealer
from ember.control.clock import ManualClock
from ember.settings import Settings
from ember.store.facade import Store
from tests.support.harness import ADMIN_KEY

PASSWORD = "s3cret-Pa55word-that-must-never-show"
USERNAME = "robot$ember-user"
IMAGE = "registry.example.test:5000/team/worker:v1"


class App:
    """The real app on SQLite with the in-memory backend standing in for Docker (it records each
    worker's LaunchSpec, registry auth included), driven on a manual clock."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.clock = ManualClock(start=1_800_000_000.0)
        self.backend = MemoryBackend(clock=self.clock)
        self.store = Store.open(f"sqlite:///{home / 'ember.db'}")
        settings = Settings(home=home, backend="docker", gpus="TEST_GPU:2", admin_key=ADMIN_KEY)
        self.app = create_app(
            settings, store=self.store, backends={"docker": self.backend}, clock=self.clock, start_loops=False
        )
        self.api = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://ember.test",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        self.responses: list[str] = []

    async def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        resp = await self.api.request(method, path, headers=headers, **kw)
        self.responses.append(resp.text)
        return resp

    async def add_auth(self, name: str, key: str | None = None, password: str = PASSWORD) -> dict[str, Any]:
        body = {"name": name, "username": USERNAME, "password": password}
        resp = await self.call("POST", "/v1/containerregistryauth", key, json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    async def user(self, name: str) -> str:
        resp = await self.call("POST", "/v1/accounts", json={"name": name})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["apiKey"])

    async def tick(self) -> None:
        await self.app.state.lifecycle.tick()
        await self.app.state.lifecycle.drain()

    async def launched_auth(self, endpoint_id: str) -> dict[str, str] | None:
        """The registry auth the endpoint's first worker was launched with."""
        await self.call("POST", f"/v2/{endpoint_id}/run", json={"input": {}})
        await self.tick()
        workers = (await self.call("GET", f"/v1/endpoints/{endpoint_id}/workers")).json()
        assert len(workers) == 1, workers
        return self.backend.launched(workers[0]["id"]).registry_auth

    def assert_no_secret_leaked(self) -> None:
        for text in self.responses:
            assert PASSWORD not in text and USERNAME not in text, text


def scenario(tmp_path: Path, body: Callable[[App], Awaitable[None]]) -> None:
    async def go() -> None:
        app = App(tmp_path)
        try:
            await body(app)
            app.assert_no_secret_leaked()
        finally:
            await app.api.aclose()
            app.store.close()

    asyncio.run(go())


# ---- the resource --------------------------------------------------------------------------------------
def test_create_list_get_and_delete_show_only_id_and_name(tmp_path: Path) -> None:
    async def body(app: App) -> None:
        created = await app.add_auth("ghcr-me")
        assert set(created) == {"id", "name"} and created["name"] == "ghcr-me"
        assert created["id"].startswith("cra-")
        other = await app.add_auth("docker-hub")
        listing = (await app.call("GET", "/v1/containerregistryauth")).json()
        assert listing == [other, created]  # by name
        one = await app.call("GET", f"/v1/containerregistryauth/{created['id']}")
        assert one.status_code == 200 and one.json() == created
        gone = await app.call("DELETE", f"/v1/containerregistryauth/{created['id']}")
        assert gone.status_code == 200 and gone.json() == {"id": created["id"], "deleted": True}
        assert (await app.call("GET", f"/v1/containerregistryauth/{created['id']}")).status_code == 404
        assert (await app.call("DELETE", f"/v1/containerregistryauth/{created['id']}")).status_code == 404
        assert (await app.call("GET", "/v1/containerregistryauth")).json() == [other]

    scenario(tmp_path, body)


def test_the_password_is_encrypted_at_rest_with_the_server_key(tmp_path: Path) -> None:
    async def body(app: App) -> None:
        created = await app.add_auth("sealed")
        app.store.close()
        for path in tmp_path.glob("ember.db*"):
            assert PASSWORD.encode() not in path.read_bytes(), path
        with sqlite3.connect(tmp_path / "ember.db") as conn:
            (sealed,) = conn.execute(
                "select password_sealed from registry_auths where id = ?", (created["id"],)
            ).fetchone()
        assert Sealer(tmp_path).open(sealed) == PASSWORD

    scenario(tmp_path, body)


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"username": "u", "password": "p"}, {"name"}),
        ({"name": "  ", "username": "u", "password": "p"}, {"name"}),
        ({"name": "n", "password": "p"}, {"username"}),
        ({"name": "n", "username": "u", "password": ""}, {"password"}),
        ({"name": "n", "username": "u", "password": 12345}, {"password"}),
        ({"name": "n", "username": "u", "password": PASSWORD * 400}, {"password"}),
        (
            {"name": 7, "username": ["u"], "password": None, "registry": "x"},
            {"name", "username", "password", "registry"},
        ),
        (["not", "an", "object"], {"body"}),
    ],
)
def test_bad_input_is_a_400_naming_every_bad_field_without_echoing_the_password(
    tmp_path: Path, payload: Any, fields: set[str]
) -> None:
    async def body(app: App) -> None:
        resp = await app.call("POST", "/v1/containerregistryauth", json=payload)
        assert resp.status_code == 400, resp.text
        err = resp.json()
        assert err["code"] == "invalid_input"
        assert {p["field"] for p in err["problems"]} == fields
        assert "12345" not in resp.text
        assert (await app.call("GET", "/v1/containerregistryauth")).json() == []

    scenario(tmp_path, body)


def test_a_malformed_body_and_a_duplicate_name_are_clear_errors(tmp_path: Path) -> None:
    async def body(app: App) -> None:
        bad = await app.call("POST", "/v1/containerregistryauth", content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error"]
        await app.add_auth("twice")
        again = await app.call(
            "POST",
            "/v1/containerregistryauth",
            json={"name": "twice", "username": "u", "password": "another"},
        )
        assert again.status_code == 409 and "twice" in again.json()["error"], again.text
        assert len((await app.call("GET", "/v1/containerregistryauth")).json()) == 1
        assert (
            await app.api.get("/v1/containerregistryauth", headers={"Authorization": ""})
        ).status_code == 401

    scenario(tmp_path, body)


def test_another_accounts_auth_is_not_found_and_cannot_be_used(tmp_path: Path) -> None:
    async def body(app: App) -> None:
        alice, bob = await app.user("alice"), await app.user("bob")
        mine = await app.add_auth("alice-login", key=alice)
        assert (await app.call("GET", f"/v1/containerregistryauth/{mine['id']}", bob)).status_code == 404
        assert (await app.call("DELETE", f"/v1/containerregistryauth/{mine['id']}", bob)).status_code == 404
        assert (await app.call("GET", "/v1/containerregistryauth", bob)).json() == []
        # The same name is free in another account.
        await app.add_auth("alice-login", key=bob)
        ep = await app.call(
            "POST",
            "/v1/endpoints",
            bob,
            json={"name": "steal", "imageName": IMAGE, "containerRegistryAuthId": mine["id"]},
        )
        assert ep.status_code == 400, ep.text
        assert [p["field"] for p in ep.json()["problems"]] == ["containerRegistryAuthId"]
        tpl = await app.call(
            "POST", "/v1/templates", bob, json={"name": "steal", "containerRegistryAuthId": mine["id"]}
        )
        assert tpl.status_code == 400, tpl.text
        assert (await app.call("GET", f"/v1/containerregistryauth/{mine['id']}", alice)).status_code == 200

    scenario(tmp_path, body)


def test_an_auth_in_use_by_a_template_or_endpoint_cannot_be_deleted(tmp_path: Path) -> None:
    async def body(app: App) -> None:
        auth = await app.add_auth("in-use")
        tpl = await app.call(
            "POST",
            "/v1/templates",
            json={"name": "private-tpl", "imageName": IMAGE, "containerRegistryAuthId": auth["id"]},
        )
        assert tpl.status_code == 201 and tpl.json()["containerRegistryAuthId"] == auth["id"], tpl.text
        ep = await app.call(
            "POST",
            "/v1/endpoints",
            json={"name": "from-tpl", "templateId": tpl.json()["id"], "workersMax": 1},
        )
        assert ep.status_code == 201, ep.text
        assert ep.json()["containerRegistryAuthId"] == auth["id"]  # inherited from the template

        refused = await app.call("DELETE", f"/v1/containerregistryauth/{auth['id']}")
        assert refused.status_code == 409, refused.text
        message = refused.json()["error"]
        assert "private-tpl" in message and "from-tpl" in message and ep.json()["id"] in message

        cleared = await app.call(
            "PATCH", f"/v1/templates/{tpl.json()['id']}", json={"containerRegistryAuthId": None}
        )
        assert cleared.status_code == 200, cleared.text
        still = await app.call("DELETE", f"/v1/containerregistryauth/{auth['id']}")
        assert still.status_code == 409 and "private-tpl" not in still.json()["error"], still.text
        # RunPod's clients send "" for "no auth".
        patched = await app.call(
            "PATCH", f"/v1/endpoints/{ep.json()['id']}", json={"containerRegistryAuthId": ""}
        )
        assert patched.status_code == 200 and patched.json()["containerRegistryAuthId"] is None, patched.text
        done = await app.call("DELETE", f"/v1/containerregistryauth/{auth['id']}")
        assert done.status_code == 200, done.text

    scenario(tmp_path, body)


def test_an_unknown_or_malformed_auth_id_on_an_endpoint_or_template_is_a_400(tmp_path: Path) -> None:
    async def body(app: App) -> None:
        for value in ("cra-doesnotexist", 42):
            ep = await app.call(
                "POST",
                "/v1/endpoints",
                json={"name": "x", "imageName": IMAGE, "containerRegistryAuthId": value},
            )
            assert ep.status_code == 400, ep.text
            assert [p["field"] for p in ep.json()["problems"]] == ["containerRegistryAuthId"]
        tpl = await app.call(
            "POST", "/v1/templates", json={"name": "t", "containerRegistryAuthId": "cra-nope"}
        )
        assert tpl.status_code == 400 and tpl.json()["problems"][0]["field"] == "containerRegistryAuthId"
        created = await app.call("POST", "/v1/templates", json={"name": "t", "imageName": IMAGE})
        patch = await app.call(
            "PATCH", f"/v1/templates/{created.json()['id']}", json={"containerRegistryAuthId": "cra-nope"}
        )
        assert patch.status_code == 400, patch.text
        assert (await app.call("GET", "/v1/endpoints")).json() == []

    scenario(tmp_path, body)


# ---- the image pull ------------------------------------------------------------------------------------
def test_a_worker_pulls_with_the_endpoints_auth_which_wins_over_the_host_login(tmp_path: Path) -> None:
    async def body(app: App) -> None:
        CredentialStore(tmp_path).save("registry.example.test:5000", "host-user", "host-password")
        auth = await app.add_auth("team")
        with_auth = await app.call(
            "POST",
            "/v1/endpoints",
            json={
                "name": "with-auth",
                "imageName": IMAGE,
                "containerRegistryAuthId": auth["id"],
                "workersMax": 1,
            },
        )
        assert await app.launched_auth(with_auth.json()["id"]) == {
            "username": USERNAME,
            "password": PASSWORD,
            "serveraddress": "registry.example.test:5000",
        }
        host_only = await app.call(
            "POST", "/v1/endpoints", json={"name": "host-only", "imageName": IMAGE, "workersMax": 1}
        )
        assert await app.launched_auth(host_only.json()["id"]) == {
            "username": "host-user",
            "password": "host-password",
            "serveraddress": "registry.example.test:5000",
        }
        anonymous = await app.call(
            "POST",
            "/v1/endpoints",
            json={"name": "anon", "imageName": "127.0.0.1:5999/x:v1", "workersMax": 1},
        )
        assert await app.launched_auth(anonymous.json()["id"]) is None

    scenario(tmp_path, body)
