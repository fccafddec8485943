"""Secrets in specs, as pure rules: how an env value names an account secret, and what sealed text
looks like.

An endpoint's or template's `env` holds no secret value itself. As on RunPod, a value names one of the
account's secrets (`PUT /v1/accounts/me/secrets`) as `{{ RUNPOD_SECRET_<NAME> }}`, and the worker is
started with the secret's value in its place; the spec, its releases and every response keep the
reference only. Secrets are stored sealed (Fernet, by the server's key): `looks_sealed` tells sealed
text from a value stored before sealing existed, so a migration seals each value once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SECRET_REF = re.compile(r"\{\{\s*RUNPOD_SECRET_([A-Za-z0-9_]+)\s*\}\}")
# A Fernet token is urlsafe base64 of version byte 0x80 and an 8-byte time: it starts "gAAAAA" and is
# at least 100 characters long (73 bytes: version, time, IV, one cipher block, HMAC).
_FERNET = re.compile(r"gAAAAA[A-Za-z0-9_\-]{90,}={0,2}")


def looks_sealed(text: str) -> bool:
    """Whether `text` has the shape of a sealed (Fernet) value."""
    return bool(_FERNET.fullmatch(text))


def secret_refs(env: Mapping[str, str]) -> set[str]:
    """The names of the account secrets that `env`'s values refer to."""
    return {m.group(1) for value in env.values() for m in SECRET_REF.finditer(str(value))}


def resolve_env(env: Mapping[str, str], secrets: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """`env` with every `{{ RUNPOD_SECRET_<NAME> }}` replaced by that secret's value, and the sorted
    names it refers to that `secrets` lacks (their references are left as written)."""
    missing: set[str] = set()

    def value_of(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in secrets:
            return secrets[name]
        missing.add(name)
        return match.group(0)

    out = {key: SECRET_REF.sub(value_of, str(value)) for key, value in env.items()}
    return out, sorted(missing)
