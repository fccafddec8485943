"""`GET /metrics` (Prometheus text format, for the metrics token or the admin's key) and the ASGI
middleware that counts and times every HTTP request by route template, never by raw path (whose ids
would make the label values unbounded). The middleware is plain ASGI: a request pays two clock reads
and a few dict lookups."""

from __future__ import annotations

import secrets
import time

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.api.deps import Runtime, key_from, runtime
from ember.control.metrics import Deferred, StoreCollector
from ember.core.errors import Forbidden, Unauthorized

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route matched (a 404)


class HttpInstruments:
    """Requests by method, route template and status code, and their latency by method and route (until
    the response's last byte is handed to the server: a long poll counts its whole hold)."""

    def __init__(self, registry: CollectorRegistry, router: Router) -> None:
        self._router = router
        self._deferred = Deferred(registry, self._record)
        self._paths: dict[object, str] = {}  # endpoint -> path template, for routes that name no route
        self._requests = Counter(
            "ember_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "code"],
            registry=registry,
        )
        self._latency = Histogram(
            "ember_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        # Label children by their values: `labels()` validates and locks on every call.
        self._counted: dict[tuple[str, str, int], Counter] = {}
        self._timed: dict[tuple[str, str], Histogram] = {}

    def observe(self, scope: Scope, status: int, elapsed_s: float) -> None:
        self.record(scope["method"], self._template(scope), status, elapsed_s)

    def record(self, method: str, route: str, status: int, elapsed_s: float) -> None:
        """One request of `method` on the route template `route`, answered with `status` (counted when
        the metrics are next read: `Deferred`)."""
        self._deferred.add(method, route, status, elapsed_s)

    def _record(self, method: str, route: str, status: int, elapsed_s: float) -> None:
        method = method if method in METHODS else "OTHER"
        counter = self._counted.get((method, route, status))
        if counter is None:
            counter = self._requests.labels(method, route, str(status))
            self._counted[(method, route, status)] = counter
        counter.inc()
        timer = self._timed.get((method, route))
        if timer is None:
            timer = self._timed[(method, route)] = self._latency.labels(method, route)
        timer.observe(elapsed_s)

    def _template(self, scope: Scope) -> str:
        """The matched route's path template. FastAPI's routes leave themselves in the scope (a partial
        match too, for a 405); plain Starlette routes and mounts leave their endpoint, looked up here."""
        route = scope.get("route")
        if route is not None:
            return str(getattr(route, "path", UNMATCHED))
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        path = self._paths.get(endpoint)
        if path is None:
            # Routes may be added after this was made: look again (once per endpoint).
            for r in self._router.routes:
                target = getattr(r, "endpoint", None) or getattr(r, "app", None)
                template = getattr(r, "path", None)
                if target is not None and isinstance(template, str):
                    self._paths.setdefault(target, template or "/")
            path = self._paths.setdefault(endpoint, UNMATCHED)
        return path


class HttpMetrics:
    """Pure ASGI middleware: hands each HTTP request's status and duration to `HttpInstruments`."""

    def __init__(self, app: ASGIApp, instruments: HttpInstruments) -> None:
        self.app = app
        self._observe = instruments.observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers when the app raises before it starts a response

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            self._observe(scope, status, time.perf_counter() - started)


async def authorize(request: Request, token: str | None) -> None:
    """The metrics token or the admin's key may read the metrics: no key (or an unknown one) is a 401,
    another account's key a 403."""
    plain = key_from(request)
    if not plain:
        raise Unauthorized("missing token: send 'Authorization: Bearer <EMBER_METRICS_TOKEN or admin key>'")
    if token and secrets.compare_digest(plain.encode(), token.encode()):
        return
    info = await runtime(request).resolve(plain)
    if info is None or info.kind == "worker":
        raise Unauthorized("invalid token: send EMBER_METRICS_TOKEN or the admin's API key")
    if info.kind != "admin":
        raise Forbidden("only the metrics token or the admin's key may read the metrics")


def install(app: FastAPI, rt: Runtime, *, token: str | None) -> HttpInstruments:
    """Count and time every request that takes the app's middleware, and serve the registry of
    `rt.signals.metrics` (with the database's gauges) at GET /metrics. Returns the instruments, which
    the fast lane (`api.fastpath`) reports its requests to."""
    registry = rt.signals.metrics.registry
    registry.register(StoreCollector(rt.store, rt.clock))
    instruments = HttpInstruments(registry, app.router)
    app.add_middleware(HttpMetrics, instruments=instruments)

    async def metrics(request: Request) -> Response:
        await authorize(request, token)
        # The gauges read the database (a few grouped queries; the first scrape sums the whole ledger):
        # in a thread, so that no request waits on them.
        body = await rt.store.run_background(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    return instruments
