"""The web console: server-rendered pages (Jinja2) over the same store and rules as the API.

`signin` signs browsers in (an API key, or a one-time link from `ember console`) and out; `pages` renders
what the signed-in account may see (the admin sees every account). Edits made on a page go through the
JSON API itself, which takes the console's session cookie beside the console header
(`ember.api.deps.caller`), so a setting changed here obeys exactly the API's checks."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ember.console import account_pages, endpoint_page, pages, signin
from ember.console.render import HERE, SignInNeeded, to_sign_in


def install(app: FastAPI) -> None:
    """Mount the console on the app: its pages, its sign-in routes and its static files."""
    app.include_router(signin.router)
    app.include_router(pages.router)
    app.include_router(endpoint_page.router)
    app.include_router(account_pages.router)
    app.mount("/console/static", StaticFiles(directory=str(HERE / "static")), name="console-static")
    app.add_exception_handler(SignInNeeded, to_sign_in)
