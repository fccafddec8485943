"""Account secrets (`PUT /v1/accounts/me/secrets`): each value is sealed with the server's key before it
reaches the store and opened only where it is used (a model download's HF token, a worker's env that
refers to it as `{{ RUNPOD_SECRET_<NAME> }}`). Names are listed; values are never returned or logged."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ember.build.registry import Sealer
from ember.core.errors import InvalidInput, Problem
from ember.core.secrets import looks_sealed, resolve_env
from ember.store.facade import Store

log = logging.getLogger("ember.secrets")


class AccountSecrets:
    """Seal, list and open one account's secrets. Store calls go through `store.run`."""

    def __init__(self, store: Store, sealer: Sealer) -> None:
        self.store = store
        self.sealer = sealer

    async def update(self, account_id: str, changes: Mapping[str, str | None]) -> list[str] | None:
        """Set (sealed) or, with None, delete secrets; the sorted names now set, None if no account."""
        sealed = {k: None if v is None else self.sealer.seal(v) for k, v in changes.items()}
        return await self.store.run(self.store.secrets.update, account_id, sealed)

    async def names(self, account_id: str) -> list[str]:
        return sorted(await self.store.run(self.store.secrets.get, account_id))

    async def values(self, account_id: str) -> dict[str, str]:
        """The account's secrets in the clear. One this server's key cannot open is left out (and its
        name logged), as if unset: the account sets it again."""
        out = {}
        for name, stored in (await self.store.run(self.store.secrets.get, account_id)).items():
            if not looks_sealed(stored):
                log.warning("secret.unsealed account=%s name=%s: set it again", account_id, name)
                continue
            try:
                out[name] = self.sealer.open(stored)
            except InvalidInput:
                log.warning("secret.unreadable account=%s name=%s: set it again", account_id, name)
        return out

    async def value(self, account_id: str, name: str) -> str | None:
        return (await self.values(account_id)).get(name)

    async def worker_env(self, account_id: str, env: Mapping[str, str]) -> dict[str, str]:
        """`env` with its `{{ RUNPOD_SECRET_<NAME> }}` references replaced by the account's secrets.
        InvalidInput naming each variable whose secret the account has not set."""
        if "RUNPOD_SECRET_" not in "".join(str(v) for v in env.values()):
            return dict(env)
        resolved, missing = resolve_env(env, await self.values(account_id))
        if missing:
            raise InvalidInput(
                "env refers to secrets this account has not set: "
                + ", ".join(missing)
                + ' (set them with PUT /v1/accounts/me/secrets {"NAME": "value"})',
                [Problem("env", f"no secret named {name}", name) for name in missing],
            )
        return resolved
