"""Migration 0006 on each real database: account secrets and git webhook secrets that an older version
stored in plain text are sealed with the server's key (and open to what they were); one already sealed
is kept; a database with plain secrets migrated without the key is an error, not silently marked done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select, update

from ember.build.registry import Sealer
from ember.core.errors import StoreError
from ember.core.secrets import looks_sealed
from ember.core.specs import from_wire, spec_to_json
from ember.store.db import MIGRATIONS, migrate
from ember.store.facade import Store
from ember.store.schema import accounts, endpoints, releases


def _plant_plain(store: Store, already_sealed: str) -> None:
    """What a database written before sealing holds, with the schema back at revision 0005."""
    store.accounts.create(id="acct_old", name="old", is_admin=False, balance_micros=0, now=1.0)
    plain = {"HF_TOKEN": "hf_plainOldToken", "KEPT": already_sealed}
    with store.db.engine.begin() as conn:
        conn.execute(update(accounts).where(accounts.c.id == "acct_old").values(secrets=json.dumps(plain)))
    git = {"url": "https://example.invalid/org/repo.git", "webhookSecret": "plain-hook-secret"}
    spec, problems = from_wire({"name": "old-git", "imageName": "img:1", "git": git})
    assert spec is not None and problems == []
    store.endpoints.create(
        id="ep_old",
        account_id="acct_old",
        name="old-git",
        spec_json=spec_to_json(spec),
        release_key="k",
        now=1.0,
    )
    # Back to 0005 the way an operator would go (later revisions undo their own tables).
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")


def _stored(store: Store) -> tuple[dict[str, str], str, list[str]]:
    with store.db.engine.connect() as conn:
        secrets = json.loads(
            conn.execute(select(accounts.c.secrets).where(accounts.c.id == "acct_old")).scalar_one()
        )
        spec = json.loads(
            conn.execute(select(endpoints.c.spec).where(endpoints.c.id == "ep_old")).scalar_one()
        )
        rel = [json.loads(s)["git"]["webhookSecret"] for s in conn.execute(select(releases.c.spec)).scalars()]
    return secrets, spec["git"]["webhookSecret"], rel


def test_plain_secrets_are_sealed_once_and_open_to_what_they_were(store: Store, tmp_path: Path) -> None:
    sealer = Sealer(tmp_path / "home")
    kept = sealer.seal("sealed-before")
    _plant_plain(store, kept)

    with pytest.raises(StoreError, match="plain text"):
        migrate(store.db.engine)  # no key: refused, and the revision stays at 0005
    assert _stored(store)[0]["HF_TOKEN"] == "hf_plainOldToken"

    migrate(store.db.engine, sealer)
    secrets, hook, release_hooks = _stored(store)
    assert secrets["KEPT"] == kept
    assert looks_sealed(secrets["HF_TOKEN"]) and sealer.open(secrets["HF_TOKEN"]) == "hf_plainOldToken"
    assert looks_sealed(hook) and sealer.open(hook) == "plain-hook-secret"
    assert release_hooks and all(
        looks_sealed(h) and sealer.open(h) == "plain-hook-secret" for h in release_hooks
    )

    migrate(store.db.engine)  # at head: nothing to do, no key needed
    assert _stored(store) == (secrets, hook, release_hooks)
