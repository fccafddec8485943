"""The job path's routes (run, runsync, status, job-take, job-done), served ahead of the framework.

FastAPI's per-request work (its router, dependency solving, parameter models) and the middleware stack
around it (error, telemetry, body-limit, metrics and exception layers, each wrapping `send`) cost more
than the rest of a job's request. These routes take a `Request` and parse it themselves; `App` matches
them first and serves them through one small frame that does what those layers do for them (the error
mapping of `api.errors`, the HTTP metrics); every other request takes the full stack. They are also in
the app's router (for `url_path_for` and the 405s) and are added to the OpenAPI document by hand.
"""

from __future__ import annotations

import logging
import operator
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ember.api.bodies import ERROR_TEXT, body_doc, finish_openapi
from ember.api.errors import error_body, json_response, status_for
from ember.core.errors import EmberError

if TYPE_CHECKING:
    from ember.api.serving import IdlePoll

Endpoint = Callable[[Request], Awaitable[Response]]
Observe = Callable[[str, str, int, float], None]  # method, route template, status, seconds
log = logging.getLogger("ember.api")
PUBLIC_PATHS = ("/v1/git/webhook",)  # proven by a signature, not an API key


@dataclass
class FastRoutes:
    """A group of fast routes under `prefix`, with what /docs says of each."""

    prefix: str
    tag: str
    routes: list[Route] = field(default_factory=list)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def route(
        self,
        path: str,
        methods: list[str],
        summary: str,
        query: tuple[str | tuple[str, dict[str, Any]], ...] = (),
        *,
        headers: tuple[tuple[str, dict[str, Any]], ...] = (),
        body: Any = None,
        responses: dict[str, str] | None = None,
        errors: tuple[int, ...] = (),
    ) -> Callable[[Endpoint], Endpoint]:
        """`headers`: optional request headers, by name with their schema; `body`: the request body's
        model (`bodies`); `responses`: success codes and what they mean; `errors`: error codes beyond
        those every operation documents (`bodies`)."""

        def add(fn: Endpoint) -> Endpoint:
            full = self.prefix + path
            self.routes.append(Route(full, fn, methods=methods))
            params = (
                [
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                    for n in re.findall(r"{(\w+)}", full)
                ]
                + [
                    {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                    if isinstance(n, str)
                    else {"name": n[0], "in": "query", "required": False, "schema": n[1]}
                    for n in query
                ]
                + [{"name": n, "in": "header", "required": False, "schema": schema} for n, schema in headers]
            )
            answers: dict[str, Any] = {
                code: {"description": text}
                if code == "204"
                else {"description": text, "content": {"application/json": {"schema": {}}}}
                for code, text in (responses or {"200": "JSON"}).items()
            }
            for code in errors:
                answers[str(code)] = {
                    "description": ERROR_TEXT[code],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                }
            for method in methods:
                op: dict[str, Any] = {
                    "tags": [self.tag],
                    "summary": summary,
                    "operationId": f"{fn.__name__}_{method.lower()}",
                    "parameters": params,
                    "responses": answers,
                }
                if body is not None and method != "GET":
                    op.update(body_doc(body))
                self.docs.setdefault(full, {})[method.lower()] = op
            return fn

        return add


Pick = Callable[[list[str]], tuple[str, ...]]  # some items of a list, by their positions


@dataclass(frozen=True)
class Lane:
    """A fast route as `App.lane_for` finds it: by its path's segments, split on "/"."""

    methods: frozenset[str]
    endpoint: Endpoint
    template: str
    literals: tuple[int, ...]  # the positions of the template's fixed segments
    names: tuple[str, ...]  # its parameters' names
    values: Pick  # the parameters' segments, of a path's segments

    @classmethod
    def of(cls, route: Route) -> Lane:
        literals, params = [], []
        for i, segment in enumerate(route.path.split("/")):
            if segment.startswith("{"):
                if not re.fullmatch(r"{\w+}", segment):
                    raise ValueError(f"a fast route's parameter takes a whole segment: {route.path}")
                params.append((i, segment[1:-1]))
            else:
                literals.append(i)
        return cls(
            frozenset(route.methods or ()),
            route.endpoint,
            route.path,
            tuple(literals),
            tuple(name for _, name in params),
            _picker([i for i, _ in params]),
        )


def _picker(positions: list[int]) -> Pick:
    """The items of a list at `positions`, as a tuple (one C call)."""
    if len(positions) == 1:
        only = positions[0]
        return lambda items: (items[only],)
    return operator.itemgetter(*positions)


# Lanes by how many segments their paths have, then by where their fixed segments are (with the picker
# of those segments), then by what those segments are.
LaneIndex = dict[int, dict[tuple[int, ...], tuple[Pick, dict[tuple[str, ...], list[Lane]]]]]


class App(FastAPI):
    """FastAPI, with the fast routes served before its middleware stack (`install`). uvicorn's protocol
    (`api.serving`) serves them straight from the connection when it can (`lane_for`, `respond`,
    `observed`); `__call__` serves them to every other ASGI caller."""

    _lanes: LaneIndex = {}  # noqa: RUF012 (each app sets its own: `install`)
    _observe: Observe | None = None
    # What the routes serve with (`api.deps.Runtime`), also `state.runtime`: an attribute of its own,
    # read on every request without `State`'s look-up by `__getattr__`.
    runtime: Any = None
    # How the HTTP protocol keeps the loop polling after an answer (`api.serving.IdlePoll`); None: never.
    idle_poll: IdlePoll | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            found = self.lane_for(scope["method"], scope["path"])
            if found is not None:
                started = time.perf_counter()
                response = await self.respond(found[0], found[1], scope, receive)
                try:
                    await response(scope, receive, send)
                finally:
                    self.observed(scope["method"], found[0], response.status_code, started)
                return
        await super().__call__(scope, receive, send)

    def lane_for(self, method: str, path: str) -> tuple[Lane, dict[str, str]] | None:
        """The fast route that serves `method path`, with its path parameters (each a whole, non-empty
        segment, as Starlette's route matches them); None for any other. A look-up by the path's
        segments: no pattern is tried against it."""
        segments = path.split("/")
        for key_of, table in self._lanes.get(len(segments), {}).values():
            for lane in table.get(key_of(segments), ()):
                if method in lane.methods:
                    values = lane.values(segments)
                    if all(values):
                        return lane, dict(zip(lane.names, values, strict=True))
        return None

    async def respond(self, lane: Lane, params: dict[str, str], scope: Scope, receive: Receive) -> Response:
        """The fast route's answer to the request, with what the full stack's layers do for it: an
        `EmberError` is answered as `api.errors` does, anything else is logged and answered a bare 500."""
        scope["app"] = self
        scope["path_params"] = params
        scope["endpoint"] = lane.endpoint
        try:
            return await lane.endpoint(Request(scope, receive))
        except EmberError as exc:
            return json_response(error_body(exc), status_for(exc))
        except Exception:
            # What Starlette's error layer does for the other routes: log it, answer a bare 500.
            log.exception("error while serving %s %s", scope["method"], scope["path"])
            return json_response({"error": "internal server error", "code": "internal"}, 500)

    def observed(self, method: str, lane: Lane, status: int, started: float) -> None:
        """Count a fast route's answer, sent `started` (`time.perf_counter`) after its request came."""
        if self._observe is not None:
            self._observe(method, lane.template, status, time.perf_counter() - started)


def install(app: App, *groups: FastRoutes, observe: Observe | None = None) -> None:
    """Serve the groups' routes ahead of `app`'s middleware (timed by `observe`), list them first in
    its router, and add them to its OpenAPI document."""
    app.router.routes[0:0] = [r for g in groups for r in g.routes]
    index: LaneIndex = {}
    for route in (r for g in groups for r in g.routes):
        lane = Lane.of(route)
        segments = route.path.split("/")
        by_count = index.setdefault(len(segments), {})
        key_of, table = by_count.setdefault(lane.literals, (_picker(list(lane.literals)), {}))
        table.setdefault(key_of(segments), []).append(lane)
    app._lanes = index
    app._observe = observe
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for g in groups:
                for path, ops in g.docs.items():
                    schema.setdefault("paths", {}).setdefault(path, {}).update(ops)
            app.openapi_schema = finish_openapi(schema, public=PUBLIC_PATHS)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
