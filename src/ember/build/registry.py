"""Container-registry credentials (`ember registry login HOST`), kept under the Ember home, mode 0600,
with each password encrypted (Fernet) by a key of its own in `<home>/secret.key` (also 0600), so the
credentials file alone (a backup, a copy) reveals no password. `Sealer` is that encryption, also used
for the accounts' registry auths (`/v1/containerregistryauth`) kept in the database.

Passwords are never printed: a credential's repr masks them, and nothing here logs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from cryptography.fernet import Fernet, InvalidToken

from ember.build.docker_api import DockerClient
from ember.core.errors import BuildError, InvalidInput

DOCKER_HUB = "docker.io"
FILE_NAME = "registries.json"
KEY_NAME = "secret.key"


@dataclass(frozen=True)
class RegistryCredential:
    host: str
    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"RegistryCredential(host={self.host!r}, username={self.username!r}, password='***')"

    def auth_config(self) -> dict[str, str]:
        """The credential as the Docker engine's `auth_config` for pull and push."""
        return {"username": self.username, "password": self.password, "serveraddress": self.host}


def registry_host(image_ref: str) -> str:
    """The registry an image reference points at (`docker.io` when it names none)."""
    first, sep, _rest = image_ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


def _normalise_host(host: str) -> str:
    host = host.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
    if host in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        return DOCKER_HUB
    return host


class Sealer:
    """Encrypts short secrets (registry passwords) with the Fernet key in `<home>/secret.key`, made
    (mode 0600) on first use. What it seals is opened only by the same home's key."""

    def __init__(self, home: str | Path) -> None:
        self.key_path = Path(home) / KEY_NAME

    def _cipher(self) -> Fernet:
        key_path = self.key_path
        try:
            return Fernet(key_path.read_bytes().strip())
        except FileNotFoundError:
            pass
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return Fernet(key_path.read_bytes().strip())
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())
        return Fernet(key_path.read_bytes().strip())

    def seal(self, secret: str) -> str:
        return self._cipher().encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        """The secret; InvalidInput when this home's key did not seal it (or the text is damaged)."""
        try:
            return self._cipher().decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise InvalidInput(f"a stored secret cannot be decrypted with the key in {self.key_path}")


class CredentialStore:
    """Credentials per registry host in `<home>/registries.json` (created with mode 0600)."""

    def __init__(self, home: str | Path) -> None:
        self.path = Path(home) / FILE_NAME
        self.sealer = Sealer(home)

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read registry credentials from {self.path}: {exc}")
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".registries-", dir=self.path.parent)  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2, sort_keys=True)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def save(self, host: str, username: str, password: str) -> RegistryCredential:
        """Store (or replace) the credential for `host`; the password is kept encrypted."""
        host = _normalise_host(host)
        if not host or not username or not password:
            raise InvalidInput("a registry login needs a host, a username and a password")
        data = self._read()
        sealed = self.sealer.seal(password)
        data[host] = {"username": username, "password_encrypted": sealed}
        self._write(data)
        return RegistryCredential(host, username, password)

    def get(self, host: str) -> RegistryCredential | None:
        entry = self._read().get(_normalise_host(host))
        if not entry:
            return None
        try:
            password = self.sealer.open(entry["password_encrypted"])
        except (KeyError, InvalidInput):
            raise InvalidInput(
                f"the saved login for {host} cannot be read (the key in {self.path.parent / KEY_NAME} "
                "does not match): run `ember registry login` again"
            )
        return RegistryCredential(_normalise_host(host), entry["username"], password)

    def remove(self, host: str) -> bool:
        """Forget `host`'s credential; True when there was one."""
        data = self._read()
        if data.pop(_normalise_host(host), None) is None:
            return False
        self._write(data)
        return True

    def hosts(self) -> list[str]:
        return sorted(self._read())

    def auth_for(self, image_ref: str) -> dict[str, str] | None:
        """The engine `auth_config` for pulling or pushing `image_ref`, or None when not logged in."""
        credential = self.get(registry_host(image_ref))
        return credential.auth_config() if credential else None


def verify_login(
    host: str, username: str, password: str, client_factory: Callable[[], DockerClient] = docker.from_env
) -> None:
    """Ask the registry, through the Docker engine, whether the credential is good; BuildError if not."""
    try:
        client = client_factory()
    except docker.errors.DockerException as exc:
        raise BuildError(f"cannot check the login: the Docker engine is not reachable ({exc})")
    try:
        client.login(username=username, password=password, registry=_normalise_host(host), reauth=True)
    except docker.errors.APIError as exc:
        raise BuildError(f"registry {host} refused the login: {exc.explanation or exc}")
    except docker.errors.DockerException as exc:
        raise BuildError(f"cannot check the login at {host}: {exc}")
    finally:
        client.close()
