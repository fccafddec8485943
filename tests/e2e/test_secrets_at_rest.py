"""Secrets at rest, against a real `ember server`: an account's API key, a registry password, a git
webhook secret, an HF token and a secret a worker's env refers to are nowhere in the database (the
SQLite file and its write-ahead log, or a `pg_dump` of PostgreSQL), the server's log or any file under
EMBER_HOME, while the worker still gets its secret; EMBER_HOME is 0700 and the server's files in it
are its user's alone."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import need
from tests.integration.store_fixtures import PG_URL, pg_available
from tests.support.live import LiveServer, live_server

HANDLER = """
import hashlib, os
import ember.serverless as sls

def handler(job):
    # Only a digest leaves the worker: the job's output is stored, and must not hold the secret.
    return {"digest": hashlib.sha256(os.environ.get("MY_TOKEN", "").encode()).hexdigest()}

sls.start({"handler": handler})
"""
# Trees under EMBER_HOME that sandboxed workers read (as uids of their own) or own: see ember.fsmodes.
WORKER_TREES = ("sources", "venvs", "models", "volumes")


def _plant(server: LiveServer, tmp_path: Path, tag: str) -> dict[str, str]:
    """Create one of each secret through the API; returns them by what they are."""
    planted = {
        "registry password": f"regpass-{tag}-{uuid.uuid4().hex}",
        "webhook secret": f"hooksecret-{tag}-{uuid.uuid4().hex}",
        "hf token": f"hf_{tag}{uuid.uuid4().hex}",
        "env secret": f"envsecret-{tag}-{uuid.uuid4().hex}",
    }
    resp = server.api("POST", "/v1/accounts", json={"name": f"tenant-{tag}"})
    assert resp.status_code == 201, resp.text
    planted["account api key"] = resp.json()["apiKey"]
    body = {"name": "private-registry", "username": "me", "password": planted["registry password"]}
    assert server.api("POST", "/v1/containerregistryauth", json=body).status_code in (200, 201)
    secrets = {"HF_TOKEN": planted["hf token"], "MY_SECRET": planted["env secret"]}
    assert server.api("PUT", "/v1/accounts/me/secrets", json=secrets).status_code == 200
    git = {"url": "https://127.0.0.1:9/org/repo.git", "webhookSecret": planted["webhook secret"]}
    resp = server.api("POST", "/v1/endpoints", json={"name": f"git-{tag}", "git": git})
    assert resp.status_code == 201, resp.text
    assert resp.json()["git"]["webhookSecret"] == planted["webhook secret"]  # shown by this answer only
    again = server.api("GET", f"/v1/endpoints/{resp.json()['id']}").json()
    assert "webhookSecret" not in again["git"]

    source = tmp_path / f"src-{tag}"
    source.mkdir()
    (source / "handler.py").write_text(HANDLER)
    ep = server.deploy(f"env-{tag}", source, env={"MY_TOKEN": "{{ RUNPOD_SECRET_MY_SECRET }}"}, workersMin=1)
    assert ep["env"] == {"MY_TOKEN": "{{ RUNPOD_SECRET_MY_SECRET }}"}
    out = server.run_job(ep["id"])
    assert out["digest"] == hashlib.sha256(planted["env secret"].encode()).hexdigest()
    return planted


def _found_in(data: bytes, planted: dict[str, str]) -> list[str]:
    return [what for what, value in planted.items() if value.encode() in data]


def _home_files(home: Path) -> Iterator[Path]:
    yield from (p for p in home.rglob("*") if p.is_file() and not p.is_symlink())


def test_no_secret_is_stored_or_logged_in_plain_text_on_sqlite(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with live_server(home) as server:
        planted = _plant(server, tmp_path, "lite")
        db_files = [home / n for n in ("ember.db", "ember.db-wal") if (home / n).exists()]
        assert home / "ember.db-wal" in db_files  # the log is searched before any checkpoint empties it
        for path in db_files:
            assert _found_in(path.read_bytes(), planted) == [], path
        assert _found_in(server.log().encode(), planted) == []
        leaks = {
            str(p.relative_to(home)): w
            for p in _home_files(home)
            if (w := _found_in(p.read_bytes(), planted))
        }
        assert leaks == {}


def test_no_secret_is_in_a_postgresql_dump(tmp_path: Path) -> None:
    ok, why = pg_available()
    need("postgres", ok, why)
    pg_dump = shutil.which("pg_dump")
    need("postgres", pg_dump is not None, "pg_dump is not installed (postgresql-client)")
    assert pg_dump is not None
    name = f"ember_secrets_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name)
    try:
        server_url = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with live_server(tmp_path / "home", env={"EMBER_DATABASE_URL": server_url}) as server:
            planted = _plant(server, tmp_path, "pg")
            log = server.log()
        env = {**os.environ, "PGPASSWORD": url.password or ""}
        dump = subprocess.run(
            [
                pg_dump,
                "-h",
                url.host or "127.0.0.1",
                "-p",
                str(url.port or 5432),
                "-U",
                url.username or "postgres",
                name,
            ],
            env=env,
            capture_output=True,
            timeout=120,
            check=True,
        ).stdout
        assert b"registry_auths" in dump and b"tenant-pg" in dump  # a dump of the right database
        assert _found_in(dump, planted) == []
        assert _found_in(log.encode(), planted) == []
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_ember_home_and_the_servers_files_in_it_are_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    (home / "instance_id").write_text("ei_older0version\n")  # as an older version left it: 0644
    os.chmod(home / "instance_id", 0o644)
    with live_server(home) as server:
        _plant(server, tmp_path, "modes")
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for name in ("ember.db", "ember.db-wal", "ember.db-shm", "admin_key", "secret.key", "instance_id"):
            path = home / name
            if path.exists() or name != "admin_key":  # the admin key may come from EMBER_ADMIN_KEY alone
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        loose = []
        for path in home.rglob("*"):
            rel = path.relative_to(home)
            if path.is_symlink() or rel.parts[0] in WORKER_TREES or rel == Path("server.log"):
                continue  # server.log is the test's own capture of the server's output
            if stat.S_IMODE(path.lstat().st_mode) & 0o077:
                loose.append(f"{rel} {oct(stat.S_IMODE(path.lstat().st_mode))}")
        assert loose == []
        # What workers read keeps read for them, never write.
        writable = [
            str(p.relative_to(home))
            for tree in ("sources", "venvs")
            for p in (home / tree).rglob("*")
            if (home / tree).exists() and not p.is_symlink() and p.lstat().st_mode & 0o022
        ]
        assert writable == []
        readable = [p for p in (home / "sources").rglob("*") if p.is_file()]
        assert readable and all(p.stat().st_mode & 0o004 for p in readable)
