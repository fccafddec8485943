"""Accounts' container-registry logins (RunPod's containerRegistryAuth): a password is sealed with the
server's key before it reaches the store, and opened only to give the Docker engine the auth_config of
a worker's image pull. Nothing here logs, lists or returns a password."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from ember.build.registry import Sealer, registry_host
from ember.core.errors import Conflict, InvalidInput, NotFound, Problem
from ember.core.ids import make_id
from ember.core.specs import spec_from_json
from ember.store.facade import Store
from ember.store.rows import RegistryAuthRow

FIELD = "containerRegistryAuthId"


@dataclass(frozen=True)
class RegistryAuth:
    """A stored registry auth as anyone may see it: no password."""

    id: str
    account_id: str
    name: str
    created_at: float

    @classmethod
    def from_row(cls, row: RegistryAuthRow) -> RegistryAuth:
        return cls(row["id"], row["account_id"], row["name"], row["created_at"])


class RegistryAuths:
    """Create, read and delete an account's registry auths; resolve one for an image pull.

    Every method is scoped to one account: another account's auth is NotFound, never a hint that it
    exists. Store calls go through `store.run` (a thread on PostgreSQL)."""

    def __init__(self, store: Store, sealer: Sealer) -> None:
        self.store = store
        self.sealer = sealer

    async def create(
        self, account_id: str, *, name: str, username: str, password: str, now: float
    ) -> RegistryAuth:
        """Store a new auth (password sealed). Conflict when the account already has one so named."""
        auth_id = make_id("registry_auth", uuid.uuid4().hex[:16])
        sealed = self.sealer.seal(password)
        created = await self.store.run(
            lambda: self.store.registry_auths.create(
                id=auth_id,
                account_id=account_id,
                name=name,
                username=username,
                password_sealed=sealed,
                now=now,
            )
        )
        if not created:
            raise Conflict(
                f"a registry auth named {name!r} already exists; delete it first or pick another name"
            )
        return await self.get(account_id, auth_id)

    async def of_account(self, account_id: str) -> list[RegistryAuth]:
        rows = await self.store.run(self.store.registry_auths.list, account_id)
        return [RegistryAuth.from_row(r) for r in rows]

    async def get(self, account_id: str, auth_id: str) -> RegistryAuth:
        row = await self.store.run(self.store.registry_auths.get, auth_id, account_id)
        if row is None:
            raise NotFound(f"registry auth {auth_id!r} not found")
        return RegistryAuth.from_row(row)

    async def require(self, account_id: str, auth_id: object) -> None:
        """InvalidInput (naming the field) unless `auth_id` is one of the account's auths."""
        if not isinstance(auth_id, str) or not auth_id:
            raise InvalidInput(
                f"invalid {FIELD}", [Problem(FIELD, "must be the id of a registry auth, or null", auth_id)]
            )
        row = await self.store.run(self.store.registry_auths.get, auth_id, account_id)
        if row is None:
            raise InvalidInput(
                f"registry auth {auth_id!r} not found",
                [Problem(FIELD, "not found: create one with POST /v1/containerregistryauth", auth_id)],
            )

    async def users(self, account_id: str, auth_id: str) -> list[str]:
        """The account's templates and endpoints that name this auth, as `template NAME (ID)`."""
        out = []
        for tpl in await self.store.run(self.store.templates.list, account_id):
            if json.loads(tpl["data"]).get(FIELD) == auth_id:
                out.append(f"template {tpl['name']} ({tpl['id']})")
        for ep in await self.store.run(self.store.endpoints.list, account_id):
            if spec_from_json(ep["spec"]).container_registry_auth_id == auth_id:
                out.append(f"endpoint {ep['name']} ({ep['id']})")
        return out

    async def delete(self, account_id: str, auth_id: str) -> None:
        """Remove an auth. NotFound when the account has none so named; Conflict while in use."""
        await self.get(account_id, auth_id)
        users = await self.users(account_id, auth_id)
        if users:
            raise Conflict(
                f"registry auth {auth_id} is used by {', '.join(users)}: set their {FIELD} to another "
                "auth (or null), or delete them first"
            )
        if not await self.store.run(self.store.registry_auths.delete, auth_id, account_id):
            raise NotFound(f"registry auth {auth_id!r} not found")

    async def auth_config(self, account_id: str, auth_id: str, image_ref: str) -> dict[str, str]:
        """The Docker engine's `auth_config` for pulling `image_ref` with the account's auth.
        NotFound when it is gone; InvalidInput when this server's key cannot open its password."""
        row = await self.store.run(self.store.registry_auths.get, auth_id, account_id)
        if row is None:
            raise NotFound(f"registry auth {auth_id} (the endpoint's {FIELD}) not found")
        try:
            password = self.sealer.open(row["password_sealed"])
        except InvalidInput:
            raise InvalidInput(
                f"registry auth {auth_id} cannot be read with this server's key "
                f"({self.sealer.key_path}): create it again"
            ) from None
        return {
            "username": row["username"],
            "password": password,
            "serveraddress": registry_host(image_ref),
        }
