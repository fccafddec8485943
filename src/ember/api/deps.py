"""What every route needs: the runtime (store, clock, signals, limits) and authentication.

Authentication accepts `Authorization: Bearer <key>` or the bare key. Keys are resolved through a small
cache (keys rarely change); a dropped worker key, a changed endpoint or an ended console session is
evicted at once, in every process (`Signals.caches_changed`, sent to the others by the store's
transaction)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ember.api.services import Services
from ember.api.serving import ANSWER, WHOLE_BODY
from ember.backends.base import Backend
from ember.control.clock import Clock
from ember.control.dispatch import Answer
from ember.control.fleet import Fleet
from ember.control.handoff import HandOff
from ember.control.signals import Signals
from ember.core import jobs as J
from ember.core import json_body
from ember.core.errors import BackendError, NotFound, PayloadTooLarge, RequestTimeout, Unauthorized
from ember.core.json_body import Json
from ember.core.limits import LimitTable
from ember.core.specs import spec_from_json
from ember.core.workers import SETTLE_GRACE_S
from ember.store.accounts import KeyInfo
from ember.store.facade import Store
from ember.store.rows import EndpointRow, WorkerRow

KEY_CACHE_S = 10.0
ENDPOINT_CACHE_S = 2.0

P = ParamSpec("P")
R = TypeVar("R")
V = TypeVar("V")


@dataclass(frozen=True)
class EndpointInfo:
    id: str
    account_id: str
    name: str
    execution_timeout_ms: int


@dataclass
class Limits:
    retention_run_s: float = J.RETENTION_RUN_S
    retention_sync_s: float = J.RETENTION_SYNC_S
    take_hold_s: float = 20.0
    settle_grace_s: float = SETTLE_GRACE_S
    ping_interval_ms: int = 2000
    lost_worker_requeues: int = J.LOST_WORKER_REQUEUES
    initial_balance_micros: int = 0
    body_timeout_s: float = 30.0


class BodyDeadlines:
    """The deadlines of the request bodies being read, checked together by one timer while any is open:
    a read registers and unregisters (two dict operations) instead of starting and stopping a timer of
    its own, which cost as much as the rest of a small body's read. A read past its deadline has its task
    cancelled; leaving `watch`'s block swallows that cancellation and sets `expired` (any other goes on).
    Deadlines are kept to within `SWEEP_S`."""

    SWEEP_S = 0.5

    def __init__(self) -> None:
        self._open: set[_Read] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, timeout_s: float) -> _Read:
        task = asyncio.current_task()
        assert task is not None
        read = _Read(self, task, time.monotonic() + timeout_s)
        self._open.add(read)
        loop = task.get_loop()
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_later(self.SWEEP_S, self._sweep)
        return read

    def _sweep(self) -> None:
        now = time.monotonic()
        for read in [r for r in self._open if r.deadline <= now and not r.expired]:
            read.expired = True
            read.task.cancel()
        if self._open and self._loop is not None:
            self._timer = self._loop.call_later(self.SWEEP_S, self._sweep)
        else:
            self._timer = None

    def _done(self, read: _Read) -> None:
        self._open.discard(read)


class _Read:
    __slots__ = ("_owner", "task", "deadline", "expired")

    def __init__(self, owner: BodyDeadlines, task: asyncio.Task[object], deadline: float) -> None:
        self._owner = owner
        self.task = task
        self.deadline = deadline
        self.expired = False

    def __enter__(self) -> _Read:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, _tb: object) -> bool:
        self._owner._done(self)
        # The sweep's own cancellation is swallowed (the caller reads `expired`); another goes on.
        return self.expired and isinstance(exc, asyncio.CancelledError) and self.task.uncancel() == 0


@dataclass
class Runtime:
    """Everything the HTTP layer uses; built by `ember.app.create_app`."""

    store: Store
    clock: Clock
    signals: Signals
    limits: Limits
    api_url: str
    shared: Path  # storage every replica reads (EMBER_SHARED_DIR): source snapshots, uploads
    fleet: Fleet = field(default_factory=lambda: Fleet({}))  # where workers run: this machine, hosts
    limit_table: LimitTable | None = None  # None = the default (`core.limits.DEFAULT_TABLE`)
    services: Services = field(default_factory=Services)  # optional: model cache, volumes, builder …
    heard: dict[str, float] = field(default_factory=dict)  # worker id -> when its last_seen_at was written
    body_deadlines: BodyDeadlines = field(default_factory=BodyDeadlines)  # see `read_body`
    _keys: dict[str, tuple[float, KeyInfo | None]] = field(default_factory=dict)
    _endpoints: dict[tuple[str, str], tuple[float, EndpointInfo | None]] = field(default_factory=dict)
    _sessions: dict[str, tuple[float, KeyInfo | None]] = field(default_factory=dict)
    # Bumped by each `forget_*`: a look-up still reading the store when its cache was cleared (on
    # PostgreSQL the read runs in a thread) does not put what it read back into the cache.
    _generation: int = 0
    handoff: HandOff = field(init=False)  # the job path's hand-off (`control.handoff`)

    def __post_init__(self) -> None:
        self.handoff = HandOff(self.store, self.signals, self.clock, self.limits)
        self.signals.on_caches_changed(self._forget)

    def _forget(self, what: str) -> None:
        if what == "keys":
            self.forget_keys()
        elif what == "endpoints":
            self.forget_endpoints()
        elif what == "sessions":
            self._generation += 1
            self._sessions.clear()

    def backend_for(self, row: WorkerRow) -> Backend:
        """The backend that runs the worker: one of this machine's, or its host's agent."""
        backend = self.fleet.for_worker(row)
        if backend is None:
            raise BackendError(f"the {row['backend']!r} backend is not enabled on this server")
        return backend

    def forget_keys(self) -> None:
        self._generation += 1
        self._keys.clear()

    def forget_endpoints(self) -> None:
        self._generation += 1
        self._endpoints.clear()

    async def endpoint_cached(self, account_id: str, ref: str) -> EndpointInfo | None:
        """The caller's endpoint by id or name, cached for ENDPOINT_CACHE_S (updates here evict at once)."""
        now = self.clock.now()
        hit = self._endpoints.get((account_id, ref))
        if hit is not None and now - hit[0] < ENDPOINT_CACHE_S:
            return hit[1]
        generation = self._generation
        row = await self.store.run(self.store.endpoints.get, ref, account_id)
        info = None
        if row is not None:
            spec = spec_from_json(row["spec"])
            info = EndpointInfo(row["id"], row["account_id"], row["name"], spec.execution_timeout_ms)
        if generation != self._generation:
            return info
        if len(self._endpoints) > 10_000:
            self._endpoints.clear()
        self._endpoints[(account_id, ref)] = (now, info)
        return info

    async def resolve_session(self, token: str) -> KeyInfo | None:
        """The account a console session cookie signs in (as its admin or user key would), cached like
        keys; `forget_session` evicts one at sign-out."""
        now = self.clock.now()
        hit = self._sessions.get(token)
        if hit is not None and now - hit[0] < KEY_CACHE_S:
            return hit[1]
        generation = self._generation
        info = await self.store.run(self._signed_in, token, now)
        if generation != self._generation:
            return info
        if len(self._sessions) > 10_000:
            self._sessions.clear()
        self._sessions[token] = (now, info)
        return info

    def _signed_in(self, token: str, now: float) -> KeyInfo | None:
        account_id = self.store.sessions.account_of(token, now)
        row = self.store.accounts.get(account_id) if account_id else None
        return None if row is None else KeyInfo(row["id"], "admin" if row["is_admin"] else "user", None, None)

    def forget_session(self, token: str) -> None:
        self._generation += 1
        self._sessions.pop(token, None)

    async def resolve(self, plain: str) -> KeyInfo | None:
        now = self.clock.now()
        hit = self._keys.get(plain)
        if hit is not None and now - hit[0] < KEY_CACHE_S:
            return hit[1]
        generation = self._generation
        info = await self.store.run(self.store.accounts.resolve_key, plain)
        if generation != self._generation:
            return info
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[plain] = (now, info)
        return info


def runtime(request: Request) -> Runtime:
    return request.scope["app"].runtime  # type: ignore[no-any-return]


async def found(rt: Runtime, what: str, read: Callable[P, R | None], *args: P.args, **kwargs: P.kwargs) -> R:
    """What the store's `read(*args, **kwargs)` finds, or NotFound ("`what` not found": a 404) when it
    finds nothing. The one way a route looks up what its caller names: reads take the caller's account,
    so another account's row is not found either."""
    row = await rt.store.run(read, *args, **kwargs)
    if row is None:
        raise NotFound(f"{what} not found")
    return row


async def own_endpoint(rt: Runtime, account_id: str, ref: str) -> EndpointRow:
    """The account's endpoint row by id or name; NotFound (404) when it has none."""
    return await found(rt, f"endpoint {ref!r}", rt.store.endpoints.get, ref, account_id)


def query_param(request: Request, name: str) -> str | None:
    """A query parameter's value (the last, as Starlette's `query_params` gives), or None. The job
    path's short queries of plain words (`take=1`) are read straight from the raw string; one with
    escapes is parsed by Starlette."""
    raw: bytes = request.scope.get("query_string", b"")
    if not raw:
        return None
    if b"%" in raw or b"+" in raw:
        return request.query_params.get(name)
    key = name.encode("latin-1")
    found = None
    for pair in raw.split(b"&"):
        k, _, v = pair.partition(b"=")
        if k == key:
            found = v
    return None if found is None else found.decode("latin-1")


def key_from(request: Request) -> str:
    raw = request.headers.get("authorization", "")
    if raw[:7].lower() == "bearer ":
        raw = raw[7:]
    return raw.strip()


# The web console's session cookie, and the header its scripts send with it. The API takes the cookie
# in place of a key only beside that header: a page of another site can make a browser send the cookie
# (a form post) but not add a header without a CORS preflight, which this server never grants.
CONSOLE_COOKIE = "ember_console"
CONSOLE_HEADER = "x-ember-console"


async def console_session(request: Request) -> KeyInfo | None:
    """The account signed in to the console by this request's cookie, None when there is none."""
    token = request.cookies.get(CONSOLE_COOKIE)
    return await runtime(request).resolve_session(token) if token else None


async def caller(request: Request) -> KeyInfo:
    """The account key of the caller (user or admin); worker keys are refused here. The console's
    scripts call with their session cookie and the console header instead of a key."""
    plain = key_from(request)
    if not plain:
        if request.headers.get(CONSOLE_HEADER) and (info := await console_session(request)) is not None:
            return info
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    info = await runtime(request).resolve(plain)
    if info is None or info.kind == "worker":
        raise Unauthorized("invalid API key")
    return info


async def admin(request: Request) -> KeyInfo:
    info = await caller(request)
    if info.kind != "admin":
        raise NotFound("no such route for this key")
    return info


async def worker_caller(request: Request, endpoint_id: str, worker_id: str) -> KeyInfo:
    plain = key_from(request)
    info = await runtime(request).resolve(plain) if plain else None
    if info is None or info.kind != "worker":
        raise Unauthorized("invalid worker key")
    if info.endpoint_id != endpoint_id or info.worker_id != worker_id:
        raise NotFound("no such worker on this endpoint")
    return info


# Route dependencies: `who: CallerDep` in a route's signature is `caller(request)` run before the
# route's body (async, so that the key look-up stays on the event loop, as when a route calls it).
# FastAPI validates a route's typed path and query parameters after its dependencies: a route whose
# parameters can fail validation calls `caller(request)` itself, so that a bad parameter still answers
# 400 before a missing key answers 401.
async def _runtime_dependency(request: Request) -> Runtime:
    return runtime(request)


async def _caller_dependency(request: Request) -> KeyInfo:
    return await caller(request)


async def _admin_dependency(request: Request) -> KeyInfo:
    return await admin(request)


RuntimeDep = Annotated[Runtime, Depends(_runtime_dependency)]
CallerDep = Annotated[KeyInfo, Depends(_caller_dependency)]  # a user or admin key (401 otherwise)
AdminDep = Annotated[KeyInfo, Depends(_admin_dependency)]  # the admin's key (404 for another key)


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole body: 413 above `limit_bytes` (before reading, when the declared length says so), 408
    when it has not all arrived within `Limits.body_timeout_s` (a slow client, or one that sent less
    than its Content-Length). Every route that reads a body reads it here."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit_bytes} bytes")
    whole: bytes | None = request.scope.get(WHOLE_BODY)  # all there already (`api.serving`)
    if whole is not None:
        if len(whole) > limit_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit_bytes} bytes")
        return whole
    chunks = []
    size = 0
    rt = runtime(request)
    timeout_s = rt.limits.body_timeout_s
    receive = request.receive  # the ASGI messages themselves: `request.stream()` adds a generator
    with rt.body_deadlines.watch(timeout_s) as deadline:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
    if deadline.expired:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s ({size} bytes received"
            + (f" of {declared} declared)" if declared else ")")
        ) from None
    return b"".join(chunks)


def answer_early(request: Request, respond: Callable[[V], Response]) -> Answer[V] | None:
    """How the request can be answered with `respond(value)` before its route returns, by the code that
    hands `value` over (`api.serving.ANSWER`); None when it can't (it is served by the ASGI stack)."""
    send: Callable[[Response], bool] | None = request.scope.get(ANSWER)
    if send is None:
        return None
    return Answer(lambda value: send(respond(value)))


async def read_json(request: Request, limit_bytes: int) -> Json:
    """The body parsed as strict JSON (`core.json_body`) whatever its content type, None when empty;
    413 above `limit_bytes`, 408 when it does not arrive in time, 400 when malformed."""
    body = await read_body(request, limit_bytes)
    if not body.strip():
        return None
    return json_body.parse(body)


def new_token(nbytes: int = 16) -> str:
    return secrets.token_hex(nbytes)
