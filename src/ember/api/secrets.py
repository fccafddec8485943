"""/v1/accounts/me/secrets: an account's secrets (e.g. HF_TOKEN), given to its workers' environment;
values are stored sealed and never returned, not even in an error."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api.deps import CallerDep, RuntimeDep
from ember.api.errors import json_response
from ember.api.services import required
from ember.core.errors import InvalidInput, NotFound, Problem

router = APIRouter(prefix="/v1")
BODY_LIMIT = 64 * 1024
SECRET_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
SECRET_MAX_CHARS = 8192


@router.put(
    "/accounts/me/secrets",
    tags=["accounts"],
    summary="Set account secrets (e.g. HF_TOKEN)",
    openapi_extra=B.body_doc("Secrets"),
)
async def put_secrets(request: Request, who: CallerDep, rt: RuntimeDep) -> Response:
    secrets = required(rt.services.secrets, "secrets")
    body = await B.json_object(request, BODY_LIMIT)
    problems = []
    values: dict[str, str | None] = {}
    for name, value in body.items():
        if not SECRET_NAME_RE.match(name):
            problems.append(Problem(name, "secret names are UPPER_CASE letters, digits and _"))
        elif value is None or (isinstance(value, str) and value and len(value) <= SECRET_MAX_CHARS):
            values[name] = value
        else:
            # The value is never echoed back, not even in an error.
            problems.append(
                Problem(name, f"must be a non-empty string of at most {SECRET_MAX_CHARS} chars, or null")
            )
    if problems or not body:
        raise InvalidInput("invalid secrets", problems or [Problem("body", "name at least one secret")])
    names = await secrets.update(who.account_id, values)  # sealed before they are stored
    if names is None:
        raise NotFound("account not found")
    rt.signals.poke_scaler()  # endpoints waiting on a gated model retry with the new token
    return json_response({"secrets": names})


@router.get("/accounts/me/secrets", tags=["accounts"], summary="Names of the account's secrets")
async def get_secrets(who: CallerDep, rt: RuntimeDep) -> Response:
    return json_response({"secrets": await required(rt.services.secrets, "secrets").names(who.account_id)})
