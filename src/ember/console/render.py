"""What every console page shares: who is signed in, and rendering a template for them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from ember.api.deps import console_session, runtime

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


@dataclass(frozen=True)
class Viewer:
    """The signed-in account: the admin sees every account's resources, anyone else only their own."""

    account_id: str
    is_admin: bool

    @property
    def scope(self) -> str | None:
        """The account whose resources a page lists; None (all accounts) for the admin."""
        return None if self.is_admin else self.account_id


class SignInNeeded(Exception):
    """Raised by `viewer_of` when no live session signs this browser in; answered with the sign-in page."""


async def viewer_of(request: Request) -> Viewer:
    info = await console_session(request)
    if info is None:
        raise SignInNeeded()
    return Viewer(info.account_id, info.kind == "admin")


def to_sign_in(request: Request, exc: Exception) -> Response:
    return RedirectResponse("/console/login", status_code=303)


def render(request: Request, name: str, viewer: Viewer | None, **context: object) -> Response:
    started = time.perf_counter()
    context.update(request=request, viewer=viewer, now=runtime(request).clock.now())
    response = templates.TemplateResponse(request, name, context)
    response.headers["server-timing"] = f"render;dur={(time.perf_counter() - started) * 1000:.1f}"
    response.headers["cache-control"] = "no-store"
    return response
