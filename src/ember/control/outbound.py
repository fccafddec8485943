"""An HTTP client for calls a tenant chooses (webhooks) that connects only where `core.outbound` allows.

The check sits in httpcore's network backend, the one place that opens sockets: `connect_tcp` resolves
the host itself, refuses the connection when any address it resolves to is refused, and connects to an
address it has checked (TLS still verifies, and sends SNI for, the URL's host name). A DNS answer that
changes between a check and the connect (rebinding) therefore cannot slip past, and neither can a
redirect (not followed) nor a proxy from the environment (not used).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Sequence

import httpcore
import httpx

from ember.core.errors import OutboundRefused
from ember.core.outbound import Network, first_refusal, refused_message


async def resolve(host: str, port: int, timeout_s: float | None) -> list[str]:
    """The addresses `host` resolves to for a TCP connection, in the resolver's order, without repeats.
    A failed lookup is httpcore's ConnectError (a delivery that may be tried again)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), timeout_s
        )
    except (OSError, TimeoutError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc or type(exc).__name__}") from exc
    out: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in out:
            out.append(address)
    if not out:
        raise httpcore.ConnectError(f"{host} resolves to no address")
    return out


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's AnyIO backend, connecting only to addresses that `core.outbound.refusal` allows.
    A refused address raises OutboundRefused, which httpx passes through unchanged."""

    def __init__(self, allow: Sequence[Network], what: str = "webhook") -> None:
        self.allow = tuple(allow)
        self.what = what
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port, timeout)
        refused = first_refusal(addresses, self.allow)
        if refused is not None:
            raise OutboundRefused(refused_message(self.what, host, *refused))
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:  # each one checked above; the first that answers wins
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # `resolve` returns at least one address
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundRefused(f"{self.what} refused: unix sockets are not an outbound destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its request mapping and error translation) over a connection pool that
    opens its connections through `GuardedBackend`. No proxy: a proxy would be the only address checked."""

    def __init__(self, allow: Sequence[Network], what: str = "webhook") -> None:
        super().__init__(trust_env=False)
        # httpx builds its pool without a way to name the network backend; build the same pool with one.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=100,  # httpx's default limits
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(allow, what),
        )


def guarded_client(allow: Sequence[Network], timeout_s: float, what: str = "webhook") -> httpx.AsyncClient:
    """An AsyncClient for tenant-chosen URLs: checked addresses only, no redirects, no proxies from the
    environment."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allow, what),
        timeout=timeout_s,
        follow_redirects=False,
        trust_env=False,
    )
