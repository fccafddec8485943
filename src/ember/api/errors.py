"""The only mapping from Ember's errors to HTTP: status codes and JSON bodies `{"error", "code", …}`."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from ember.core import errors as E

STATUS: dict[type[E.EmberError], int] = {
    E.PayloadTooLarge: 413,
    E.InvalidInput: 400,
    E.RequestTimeout: 408,
    E.Unauthorized: 401,
    E.Forbidden: 403,
    E.NotFound: 404,
    E.Conflict: 409,
    E.LimitExceeded: 402,
    E.BackendError: 502,
    E.StoreError: 503,
    E.BuildError: 422,
    E.ModelError: 502,
}


def status_for(exc: E.EmberError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def json_response(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type="application/json")


def error_body(exc: E.EmberError) -> dict[str, object]:
    body: dict[str, object] = {"error": exc.message, "code": exc.code}
    if isinstance(exc, E.InvalidInput) and exc.problems:
        body["problems"] = [p.as_dict() for p in exc.problems]
    if isinstance(exc, E.BuildError) and exc.log_tail:
        body["log"] = exc.log_tail
    return body


def install(app: FastAPI) -> None:
    @app.exception_handler(E.EmberError)
    async def _ember(_: Request, exc: E.EmberError) -> Response:
        return json_response(error_body(exc), status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        problems = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
                "message": err.get("msg", ""),
            }
            for err in exc.errors()
        ]
        return json_response({"error": "invalid request", "code": "invalid_input", "problems": problems}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = "no such route"
        response = json_response({"error": message, "code": f"http_{exc.status_code}"}, exc.status_code)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(sorted(_allowed(request)))
        return response


def _allowed(request: Request) -> set[str]:
    """Every method some route serves at this path (Starlette's 405 names the first route's only)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return methods
