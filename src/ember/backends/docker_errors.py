"""How docker-py's failures become Ember's: a `BackendError` that says what failed, and no socket left
behind by a failed connect."""

from __future__ import annotations

import socket

from ember.core.errors import BackendError


def close_left_sockets(exc: BaseException) -> None:
    """Close the sockets that the frames of `exc`'s traceback (and of its causes) still hold: docker-py's
    unix-socket connect does not close its socket when the connect fails, which would otherwise stay
    open until the collector finds it, long after the error was reported."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            for value in tb.tb_frame.f_locals.values():
                if isinstance(value, socket.socket):
                    value.close()
            tb = tb.tb_next
        error = error.__cause__ or error.__context__


def docker_failure(action: str, exc: Exception) -> BackendError:
    explanation = getattr(exc, "explanation", None) or str(exc)
    return BackendError(f"docker: {action} failed: {explanation}")
