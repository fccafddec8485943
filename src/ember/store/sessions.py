"""Console sign-ins: browser sessions and one-time sign-in links, kept by the SHA-256 of their token
(the token itself lives only in the browser's cookie or the link), so a copy of the database signs no
one in. A link is consumed by the transaction that turns it into a session: it works once."""

from __future__ import annotations

import hashlib

from sqlalchemy import delete, insert, select

from ember.store.db import Repository
from ember.store.schema import console_sessions

C = console_sessions.c
SESSION = "session"
LINK = "link"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore(Repository):
    def create(self, token: str, account_id: str, kind: str, now: float, ttl_s: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(console_sessions).where(C.expires_at < now))
            conn.execute(
                insert(console_sessions).values(
                    token_hash=token_hash(token),
                    account_id=account_id,
                    kind=kind,
                    created_at=now,
                    expires_at=now + ttl_s,
                )
            )

    def account_of(self, token: str, now: float) -> str | None:
        """The account a live session token signs in, None when unknown or expired."""
        row = self._one(
            select(C.account_id).where(
                C.token_hash == token_hash(token), C.kind == SESSION, C.expires_at > now
            )
        )
        return None if row is None else str(row["account_id"])

    def consume_link(self, token: str, now: float) -> str | None:
        """The account of a live one-time link, which is deleted: a second use finds nothing."""
        key = token_hash(token)
        with self.engine.begin() as conn:
            row = conn.execute(
                select(C.account_id, C.expires_at).where(C.token_hash == key, C.kind == LINK)
            ).first()
            if row is None:
                return None
            gone = conn.execute(delete(console_sessions).where(C.token_hash == key)).rowcount
        if gone != 1 or row.expires_at <= now:
            return None
        return str(row.account_id)

    def delete(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(console_sessions).where(C.token_hash == token_hash(token)))
