"""Signing in to the console and out: with an API key typed into the sign-in page, or with a one-time
link (`ember console`, from `POST /v1/console/links`). Either makes a session whose token is a cookie
(HttpOnly, SameSite=Lax); the database keeps only its hash (`store.sessions`)."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from ember.api.deps import CONSOLE_COOKIE, caller, read_body, runtime
from ember.console.render import render
from ember.core.errors import Forbidden
from ember.store.sessions import LINK, SESSION

SESSION_TTL_S = 12 * 3600.0
LINK_TTL_S = 300.0
FORM_LIMIT = 16 * 1024

router = APIRouter(include_in_schema=False)


def _same_origin(request: Request) -> None:
    """Refuse a form posted from another site (a browser names the page's origin on every POST)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Forbidden("this form was posted from another site")


async def _signed_in(request: Request, account_id: str) -> Response:
    rt = runtime(request)
    token = secrets.token_urlsafe(32)
    await rt.store.run(rt.store.sessions.create, token, account_id, SESSION, rt.clock.now(), SESSION_TTL_S)
    response = RedirectResponse("/console/", status_code=303)
    response.set_cookie(
        CONSOLE_COOKIE,
        token,
        max_age=int(SESSION_TTL_S),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.get("/console/login")
async def sign_in_page(request: Request, link: str = "") -> Response:
    if link:
        rt = runtime(request)
        account_id = await rt.store.run(rt.store.sessions.consume_link, link, rt.clock.now())
        if account_id is not None:
            return await _signed_in(request, account_id)
        return _sign_in_form(request, "this sign-in link was used already or has expired", 400)
    return _sign_in_form(request, None, 200)


def _sign_in_form(request: Request, error: str | None, status: int) -> Response:
    response = render(request, "signin.html", None, error=error)
    response.status_code = status
    return response


@router.post("/console/login")
async def sign_in(request: Request) -> Response:
    _same_origin(request)
    form = parse_qs((await read_body(request, FORM_LIMIT)).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    if key[:7].lower() == "bearer ":
        key = key[7:].strip()
    info = await runtime(request).resolve(key) if key else None
    if info is None or info.kind == "worker":
        return _sign_in_form(request, "that API key is not valid here", 401)
    return await _signed_in(request, info.account_id)


@router.post("/console/logout")
async def sign_out(request: Request) -> Response:
    _same_origin(request)
    token = request.cookies.get(CONSOLE_COOKIE)
    if token:
        rt = runtime(request)
        with rt.signals.in_txn(("c", "sessions")):
            await rt.store.run(rt.store.sessions.delete, token)
        rt.forget_session(token)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(CONSOLE_COOKIE, path="/")
    return response


@router.post("/v1/console/links", include_in_schema=True, tags=["console"])
async def create_link(request: Request) -> Response:
    """A one-time sign-in link to the console for the caller's account, valid for five minutes."""
    who = await caller(request)
    rt = runtime(request)
    token = secrets.token_urlsafe(32)
    await rt.store.run(rt.store.sessions.create, token, who.account_id, LINK, rt.clock.now(), LINK_TTL_S)
    path = f"/console/login?link={token}"
    return JSONResponse({"path": path, "url": rt.api_url.rstrip("/") + path, "expiresIn": int(LINK_TTL_S)})
