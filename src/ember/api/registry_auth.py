"""/v1/containerregistryauth: an account's container-registry logins in RunPod's REST shape. A create
takes `name`, `username` and `password`; every answer is `{"id", "name"}` (the username and password are
never returned, and a bad password is never echoed in an error). Templates and endpoints name one by
`containerRegistryAuthId`; workers' image pulls use it."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api.deps import CallerDep, Runtime, RuntimeDep, read_json
from ember.api.errors import json_response
from ember.api.services import required
from ember.control.registry_auths import RegistryAuth, RegistryAuths
from ember.core.errors import InvalidInput, Problem
from ember.core.names import name_problems

router = APIRouter(prefix="/v1")
BODY_LIMIT = 64 * 1024
USERNAME_MAX_CHARS = 200
PASSWORD_MAX_CHARS = 8192
FIELDS = ("name", "username", "password")


def registry_auths(rt: Runtime) -> RegistryAuths:
    return required(rt.services.registry_auths, "registry auths")


async def require_owned(rt: Runtime, account_id: str, auth_id: object) -> None:
    """A template's or endpoint's `containerRegistryAuthId` must be null, "" or one of the account's
    registry auths: InvalidInput (400) naming the field otherwise."""
    if auth_id is None or auth_id == "":
        return
    await registry_auths(rt).require(account_id, auth_id)


def _view(auth: RegistryAuth) -> dict[str, object]:
    return {"id": auth.id, "name": auth.name}


def _checked(body: object) -> tuple[str, str, str]:
    """(name, username, password) from a create body, or InvalidInput with every problem at once."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", [Problem("body", "must be a JSON object")])
    problems = [Problem(k, "unknown field") for k in body if k not in FIELDS]
    name, username, password = body.get("name"), body.get("username"), body.get("password")
    problems.extend(name_problems(name))
    problems.extend(name_problems(username, "username", max_chars=USERNAME_MAX_CHARS))
    if not isinstance(password, str) or not password or len(password) > PASSWORD_MAX_CHARS:
        # The value is never echoed back, not even in an error.
        problems.append(Problem("password", f"a non-empty string of at most {PASSWORD_MAX_CHARS} chars"))
    if problems:
        raise InvalidInput("invalid registry auth", problems)
    return str(name).strip(), str(username), str(password)


@router.post(
    "/containerregistryauth",
    tags=["containerregistryauth"],
    summary="Store a container-registry login (name, username, password)",
    status_code=201,
    openapi_extra=B.body_doc(B.RegistryAuthCreate),
    responses=B.error_responses(409),
)
async def create_registry_auth(request: Request, who: CallerDep, rt: RuntimeDep) -> Response:
    body = await read_json(request, BODY_LIMIT)
    name, username, password = _checked(body)
    B.check(B.RegistryAuthCreate, body)  # after _checked, which never echoes the password
    auth = await registry_auths(rt).create(
        who.account_id, name=name, username=username, password=password, now=rt.clock.now()
    )
    return json_response(_view(auth), 201)


@router.get("/containerregistryauth", tags=["containerregistryauth"], summary="List registry logins")
async def list_registry_auths(who: CallerDep, rt: RuntimeDep) -> Response:
    return json_response([_view(a) for a in await registry_auths(rt).of_account(who.account_id)])


@router.get("/containerregistryauth/{auth_id}", tags=["containerregistryauth"], summary="One registry login")
async def get_registry_auth(auth_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    return json_response(_view(await registry_auths(rt).get(who.account_id, auth_id)))


@router.delete(
    "/containerregistryauth/{auth_id}",
    tags=["containerregistryauth"],
    summary="Delete a registry login (refused while a template or endpoint uses it)",
    responses=B.error_responses(409),
)
async def delete_registry_auth(auth_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    await registry_auths(rt).delete(who.account_id, auth_id)
    return json_response({"id": auth_id, "deleted": True})
