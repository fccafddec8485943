"""/v1 templates: RunPod's reusable image settings (`imageName`, `env`, `dockerStartCmd`, …) that an
endpoint names by `templateId`; create, list, get, update, delete."""

from __future__ import annotations

import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api import views
from ember.api.deps import CallerDep, Runtime, RuntimeDep, found
from ember.api.errors import json_response
from ember.api.registry_auth import require_owned
from ember.core.errors import InvalidInput, Problem
from ember.core.ids import make_id
from ember.core.json_body import Json, JsonObject
from ember.core.names import name_problems
from ember.core.specs import handler_problems, normalise_handler
from ember.store.rows import TemplateRow

router = APIRouter(prefix="/v1")
BODY_LIMIT = 1024 * 1024
# What a template holds besides its name; an endpoint naming the template takes these unless it sets them.
TEMPLATE_FIELDS = (
    "imageName",
    "env",
    "dockerStartCmd",
    "containerDiskInGb",
    "containerRegistryAuthId",
    "handler",
)


def template_data(body: JsonObject) -> tuple[str, JsonObject]:
    """The name and the stored record of a template body (its name and `TEMPLATE_FIELDS`, the handler
    normalised), or InvalidInput naming every bad field."""
    problems = []
    name = body.get("name")
    problems.extend(name_problems(name))
    if not isinstance(body.get("imageName", ""), str):
        problems.append(Problem("imageName", "must be a string", body.get("imageName")))
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        problems.append(Problem("env", "must map strings to strings", env))
    handler = body.get("handler")
    if handler is not None:
        if isinstance(handler, str):
            handler = body["handler"] = normalise_handler(handler)
            problems.extend(handler_problems(handler))
        else:
            problems.append(Problem("handler", "must be a string or null", handler))
    if problems or not isinstance(name, str):  # name_problems refuses a name that is not a string
        raise InvalidInput(
            "invalid template: " + "; ".join(f"{p.field} {p.message}" for p in problems), problems
        )
    return name, {k: body[k] for k in ("name", *TEMPLATE_FIELDS) if k in body}


def stored_data(row: TemplateRow) -> JsonObject:
    """The record a template row keeps (`template_data`'s result, as stored)."""
    data: Json = json.loads(row["data"])
    if not isinstance(data, dict):
        raise TypeError(f"template {row['id']}: stored data is not a JSON object")
    return data


def _template_view(row: TemplateRow) -> dict[str, object]:
    return {"id": row["id"], **stored_data(row), "createdAt": views.iso(row["created_at"])}


@router.post(
    "/templates",
    tags=["templates"],
    summary="Create a template",
    status_code=201,
    openapi_extra=B.body_doc(B.TemplateBody),
)
async def create_template(
    who: CallerDep,
    rt: RuntimeDep,
    body: Annotated[JsonObject, Depends(B.ObjectBody(BODY_LIMIT, B.TemplateBody))],
) -> Response:
    name, data = template_data(body)
    await require_owned(rt, who.account_id, data.get("containerRegistryAuthId"))
    template_id = make_id("template", uuid.uuid4().hex[:16])
    await rt.store.run(
        lambda: rt.store.templates.create(
            id=template_id, account_id=who.account_id, name=name, data=data, now=rt.clock.now()
        )
    )
    return json_response(_template_view(await own_template(rt, who.account_id, template_id)), 201)


@router.get("/templates", tags=["templates"], summary="List templates")
async def list_templates(who: CallerDep, rt: RuntimeDep) -> Response:
    rows = await rt.store.run(rt.store.templates.list, who.account_id)
    return json_response([_template_view(r) for r in rows])


async def own_template(rt: Runtime, account_id: str, template_id: str) -> TemplateRow:
    """The account's template row; NotFound (404) when it is unknown or another account's."""
    return await found(rt, f"template {template_id!r}", rt.store.templates.get, template_id, account_id)


@router.get("/templates/{template_id}", tags=["templates"], summary="One template")
async def get_template(template_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    return json_response(_template_view(await own_template(rt, who.account_id, template_id)))


@router.patch(
    "/templates/{template_id}",
    tags=["templates"],
    summary="Update a template",
    openapi_extra=B.body_doc(B.TemplatePatch),
)
async def update_template(template_id: str, request: Request, who: CallerDep, rt: RuntimeDep) -> Response:
    row = await own_template(rt, who.account_id, template_id)
    # Read here, not as a dependency: an unknown template is a 404 whatever the body.
    patch = await B.parse_body(request, B.TemplatePatch, BODY_LIMIT)
    name, data = template_data({**stored_data(row), **patch})
    await require_owned(rt, who.account_id, data.get("containerRegistryAuthId"))
    await rt.store.run(rt.store.templates.update, template_id, name, data)
    return json_response(_template_view(await own_template(rt, who.account_id, template_id)))


@router.delete("/templates/{template_id}", tags=["templates"], summary="Delete a template")
async def delete_template(template_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    await own_template(rt, who.account_id, template_id)
    await rt.store.run(rt.store.templates.delete, template_id)
    return json_response({"id": template_id, "deleted": True})
