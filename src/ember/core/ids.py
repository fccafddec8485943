"""Prefixed identifiers (ep_…, job_…, wk_…) that are URL-path-safe, and their parsing.

Ids are generated from caller-supplied randomness so that this module stays pure.
"""

from __future__ import annotations

import re

PREFIXES = {
    "account": "acct",
    "endpoint": "ep",
    "job": "job",
    "sync_job": "sync",
    "worker": "wk",
    "template": "tpl",
    "volume": "vol",
    "release": "rel",
    "key": "key",
    "registry_auth": "cra",
    "source": "src",
    "host": "host",
}

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def make_id(kind: str, token: str) -> str:
    """Return `<prefix>-<token>` for `kind`; `token` must already be URL-path-safe (e.g. hex)."""
    prefix = PREFIXES[kind]
    if not _SAFE.match(token):
        raise ValueError(f"id token {token!r} is not URL-path-safe")
    return f"{prefix}-{token}"


def job_token(now_s: float, randomness: bytes) -> str:
    """A job id's token: the creation time in milliseconds (12 hex digits) then `randomness` (10 bytes,
    20 hex digits). Ids made later sort later, so new jobs are appended to the end of the job index
    instead of landing on a random page of it."""
    if len(randomness) != 10:
        raise ValueError("a job token takes 10 bytes of randomness")
    return f"{max(0, int(now_s * 1000)) & 0xFFFF_FFFF_FFFF:012x}{randomness.hex()}"


def is_safe_id(value: str) -> bool:
    """True when `value` can be placed in a URL path unescaped ([A-Za-z0-9_-], 1-128 chars)."""
    return bool(_SAFE.match(value))


def kind_of(value: str) -> str | None:
    """The kind an id was made for, from its prefix, or None when it has no known prefix."""
    head = value.split("-", 1)[0]
    for kind, prefix in PREFIXES.items():
        if prefix == head:
            return kind
    return None
