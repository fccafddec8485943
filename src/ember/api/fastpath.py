"""The job path's routes (run, runsync, status, job-take, job-done) as plain Starlette routes.

FastAPI's per-request work (its router, dependency solving, parameter models) costs about 0.3 ms a
request on a small machine: more than the rest of a job's request. These routes take a `Request` and
parse it themselves, sit first in the app's router, and are added to the OpenAPI document by hand.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ember.api.bodies import ERROR_TEXT, body_doc, finish_openapi

Endpoint = Callable[[Request], Awaitable[Response]]
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
        body: Any = None,
        responses: dict[str, str] | None = None,
        errors: tuple[int, ...] = (),
    ) -> Callable[[Endpoint], Endpoint]:
        """`body`: the request body's model (`bodies`); `responses`: success codes and
        what they mean; `errors`: error codes beyond those every operation documents (`bodies`)."""

        def add(fn: Endpoint) -> Endpoint:
            full = self.prefix + path
            self.routes.append(Route(full, fn, methods=methods))
            params = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in re.findall(r"{(\w+)}", full)
            ] + [
                {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                if isinstance(n, str)
                else {"name": n[0], "in": "query", "required": False, "schema": n[1]}
                for n in query
            ]
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


def install(app: FastAPI, *groups: FastRoutes) -> None:
    """Put the groups' routes first in `app`'s router and into its OpenAPI document."""
    app.router.routes[0:0] = [r for g in groups for r in g.routes]
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
