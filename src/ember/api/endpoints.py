"""/v1 templates and endpoints: create, list, get, update (a change of what runs makes a release),
delete; releases and rollback. Field names are RunPod's REST names (`core.specs.WIRE_FIELDS`)."""

from __future__ import annotations

import functools
import json
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api import sources, views
from ember.api.deps import Runtime, caller, read_json, runtime
from ember.api.errors import json_response
from ember.api.git import normalise_git, webhook_secret
from ember.api.registry_auth import require_owned
from ember.build.source import snapshot
from ember.core.errors import Conflict, Forbidden, InvalidInput, NotFound, Problem
from ember.core.ids import make_id
from ember.core.names import name_problems
from ember.core.specs import (
    EndpointSpec,
    from_wire,
    handler_problems,
    normalise_handler,
    release_key,
    spec_from_json,
    spec_to_json,
)

router = APIRouter(prefix="/v1")
BODY_LIMIT = 1024 * 1024
TEMPLATE_FIELDS = (
    "imageName",
    "env",
    "dockerStartCmd",
    "containerDiskInGb",
    "containerRegistryAuthId",
    "handler",
)


async def _body(request: Request) -> dict[str, Any]:
    body = await read_json(request, BODY_LIMIT)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", [Problem("body", "must be a JSON object")])
    return body


# ---- templates ---------------------------------------------------------------------------------------
def _template_data(body: dict[str, Any]) -> dict[str, Any]:
    problems = []
    problems.extend(name_problems(body.get("name")))
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
    if problems:
        raise InvalidInput(
            "invalid template: " + "; ".join(f"{p.field} {p.message}" for p in problems), problems
        )
    return {k: body[k] for k in ("name", *TEMPLATE_FIELDS) if k in body}


def _template_view(row: Any) -> dict[str, Any]:
    return {"id": row["id"], **json.loads(row["data"]), "createdAt": views.iso(row["created_at"])}


@router.post(
    "/templates",
    tags=["templates"],
    summary="Create a template",
    status_code=201,
    openapi_extra=B.body_doc(B.TemplateBody),
)
async def create_template(request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    data = _template_data(B.check(B.TemplateBody, B.integers(B.TemplateBody, await _body(request))))
    await require_owned(rt, who.account_id, data.get("containerRegistryAuthId"))
    template_id = make_id("template", uuid.uuid4().hex[:16])
    await rt.store.run(
        lambda: rt.store.endpoints.create_template(
            id=template_id, account_id=who.account_id, name=data["name"], data=data, now=rt.clock.now()
        )
    )
    row = await rt.store.run(rt.store.endpoints.template, template_id, who.account_id)
    return json_response(_template_view(row), 201)


@router.get("/templates", tags=["templates"], summary="List templates")
async def list_templates(request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    rows = await rt.store.run(rt.store.endpoints.templates, who.account_id)
    return json_response([_template_view(r) for r in rows])


async def _own_template(rt: Runtime, account_id: str, template_id: str) -> Any:
    row = await rt.store.run(rt.store.endpoints.template, template_id, account_id)
    if row is None:
        raise NotFound(f"template {template_id!r} not found")
    return row


@router.get("/templates/{template_id}", tags=["templates"], summary="One template")
async def get_template(template_id: str, request: Request) -> Response:
    who = caller(request)
    return json_response(_template_view(await _own_template(runtime(request), who.account_id, template_id)))


@router.patch(
    "/templates/{template_id}",
    tags=["templates"],
    summary="Update a template",
    openapi_extra=B.body_doc(B.TemplatePatch),
)
async def update_template(template_id: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    row = await _own_template(rt, who.account_id, template_id)
    patch = B.check(B.TemplatePatch, B.integers(B.TemplatePatch, await _body(request)))
    data = _template_data({**json.loads(row["data"]), **patch})
    await require_owned(rt, who.account_id, data.get("containerRegistryAuthId"))
    await rt.store.run(rt.store.endpoints.update_template, template_id, data["name"], data)
    return json_response(_template_view(await _own_template(rt, who.account_id, template_id)))


@router.delete("/templates/{template_id}", tags=["templates"], summary="Delete a template")
async def delete_template(template_id: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    await _own_template(rt, who.account_id, template_id)
    await rt.store.run(rt.store.endpoints.delete_template, template_id)
    return json_response({"id": template_id, "deleted": True})


# ---- endpoints ---------------------------------------------------------------------------------------
async def _resolve_spec(
    rt: Runtime, account_id: str, body: dict[str, Any], base: EndpointSpec | None, *, admin: bool
) -> EndpointSpec:
    body = B.integers(B.EndpointBody, body)
    template_id = body.get("templateId")
    if template_id is not None and not isinstance(template_id, str):
        raise InvalidInput(
            "templateId must be a template id (a string)",
            [Problem("templateId", "must be a string or null", template_id)],
        )
    if template_id:
        tpl = json.loads((await _own_template(rt, account_id, template_id))["data"])
        for key in TEMPLATE_FIELDS:
            if key in tpl and key not in body:
                body[key] = {**tpl[key], **body.get("env", {})} if key == "env" else tpl[key]
        if "env" in tpl and "env" in body:
            body["env"] = {**tpl["env"], **body["env"]}
    body.pop("sourceDigest", None)
    _one_source(body, base, admin=admin)
    if ("sourceDir" in body or "sourceId" in body) and "handler" not in body:
        body["handler"] = None  # a directory named again is searched again (its handler may have moved)
    spec, problems = from_wire(body, base)
    if problems or spec is None:
        raise InvalidInput(
            "invalid endpoint: " + "; ".join(f"{p.field} {p.message}" for p in problems), problems
        )
    B.check(B.EndpointPatch if base else B.EndpointBody, body)
    if spec.git:
        sealer = rt.extras.get("sealer")
        previous = base.git if base else None
        git = normalise_git(spec.git, previous, admin=admin, seal=sealer.seal if sealer else None)
        spec = spec.with_changes(git=git)
    if spec.source_dir:
        digest, _, handler = await _snapshot(rt, spec.source_dir, spec.handler)
        spec = spec.with_changes(
            source_dir=str(Path(spec.source_dir).expanduser().resolve()),
            source_digest=digest,
            handler=handler,
        )
    elif spec.source_id:
        upload = await sources.own_upload(rt, account_id, spec.source_id)
        digest, _, handler = await _snapshot(rt, str(upload.tree), spec.handler, label=upload.id)
        spec = spec.with_changes(source_digest=digest, handler=handler)
    if spec.network_volume_id:
        vol = await rt.store.run(rt.store.endpoints.volume, spec.network_volume_id, account_id)
        if vol is None:
            raise InvalidInput(
                f"network volume {spec.network_volume_id!r} not found",
                [Problem("networkVolumeId", "not found", spec.network_volume_id)],
            )
    await require_owned(rt, account_id, spec.container_registry_auth_id)
    hook = rt.extras.get("on_spec")
    if hook is not None:
        spec = await hook(account_id, spec)
    return spec


def _one_source(body: dict[str, Any], base: EndpointSpec | None, *, admin: bool) -> None:
    """A directory on the server (`sourceDir`, the admin's only) or an upload (`sourceId`), never both:
    naming one drops the other from the endpoint. Forbidden (403) for a tenant's host path, including
    one an endpoint of theirs kept from before uploads existed."""
    if body.get("sourceDir") and body.get("sourceId"):
        raise InvalidInput(
            "give sourceDir or sourceId, not both",
            [Problem("sourceId", "cannot be given with sourceDir", body["sourceId"])],
        )
    if body.get("sourceId"):
        body["sourceDir"] = None
    elif body.get("sourceDir"):
        body["sourceId"] = None
    kept = base is not None and base.source_dir and "sourceDir" not in body
    if not admin and (body.get("sourceDir") or kept):
        raise Forbidden(
            "sourceDir names a directory on the server, which only the admin may deploy; upload the "
            "directory instead: `ember deploy DIR` packs and uploads it (POST /v1/sources, then "
            '{"sourceId": ...})'
        )


async def _snapshot(
    rt: Runtime, source_dir: str, handler: str | None, *, label: str | None = None
) -> tuple[str, Path, str]:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(
        functools.partial(snapshot, source_dir, rt.home / "sources", handler, label=label)
    )


def _needs_build(spec: EndpointSpec, base: EndpointSpec | None = None) -> bool:
    """A git endpoint builds when created, when its git source changes, or while nothing has built yet;
    other changes (env, command) reuse the image that serves."""
    if not spec.git:
        return False
    if base is None or not base.image_name or not base.git:
        return True
    return any(spec.git.get(k) != base.git.get(k) for k in ("url", "branch", "dockerfile", "context"))


async def _endpoint_view(rt: Runtime, row: Any) -> dict[str, Any]:
    workers = await rt.store.run(lambda: rt.store.workers.list(endpoint_id=row["id"]))
    return views.endpoint(row, owner=True, workers=list(workers))


def _shown_once(
    rt: Runtime, view: dict[str, Any], spec: EndpointSpec, base: EndpointSpec | None
) -> dict[str, Any]:
    """The view, with the git webhook secret in the clear when this request set it: the one answer
    that shows it (it is stored sealed, and never returned again)."""
    secret = (spec.git or {}).get("webhookSecret")
    if secret and "git" in view and secret != ((base.git if base else None) or {}).get("webhookSecret"):
        view["git"] = {**view["git"], "webhookSecret": webhook_secret(rt, spec.git or {})}
    return view


@router.post(
    "/endpoints",
    tags=["endpoints"],
    summary="Create an endpoint",
    status_code=201,
    openapi_extra=B.body_doc(B.EndpointBody),
    responses=B.error_responses(403, 409, 502),
)
async def create_endpoint(request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    body = await _body(request)
    spec = await _resolve_spec(rt, who.account_id, body, None, admin=who.kind == "admin")
    existing = await rt.store.run(rt.store.endpoints.get, spec.name, who.account_id)
    if existing is not None and existing["name"] == spec.name:
        raise Conflict(
            f"an endpoint named {spec.name!r} already exists ({existing['id']}); update it with PATCH"
        )
    endpoint_id = make_id("endpoint", uuid.uuid4().hex[:12])
    status = "BUILDING" if _needs_build(spec) else "READY"
    await rt.store.run(
        lambda: rt.store.endpoints.create(
            id=endpoint_id,
            account_id=who.account_id,
            name=spec.name,
            spec_json=spec_to_json(spec),
            release_key=release_key(spec),
            now=rt.clock.now(),
            release_status=status,
        )
    )
    rt.forget_endpoints()
    rt.signals.poke_scaler()
    if status == "BUILDING":
        rt.signals.builds.set()
    row = await rt.store.run(rt.store.endpoints.get, endpoint_id, who.account_id)
    return json_response(_shown_once(rt, await _endpoint_view(rt, row), spec, None), 201)


@router.get("/endpoints", tags=["endpoints"], summary="List endpoints")
async def list_endpoints(request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    rows = await rt.store.run(rt.store.endpoints.list, who.account_id)
    return json_response([await _endpoint_view(rt, r) for r in rows])


async def own_endpoint(rt: Runtime, account_id: str, ref: str) -> Any:
    row = await rt.store.run(rt.store.endpoints.get, ref, account_id)
    if row is None:
        raise NotFound(f"endpoint {ref!r} not found")
    return row


@router.get("/endpoints/{ref}", tags=["endpoints"], summary="One endpoint, with its scaling verdict")
async def get_endpoint(ref: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    return json_response(await _endpoint_view(rt, await own_endpoint(rt, who.account_id, ref)))


@router.patch(
    "/endpoints/{ref}",
    tags=["endpoints"],
    summary="Update an endpoint",
    openapi_extra=B.body_doc(B.EndpointPatch),
    responses=B.error_responses(403, 409, 502),
)
async def update_endpoint(ref: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    row = await own_endpoint(rt, who.account_id, ref)
    body = await _body(request)
    base = spec_from_json(row["spec"])
    spec = await _resolve_spec(rt, who.account_id, body, base, admin=who.kind == "admin")
    if spec.name != row["name"]:
        clash = await rt.store.run(rt.store.endpoints.get, spec.name, who.account_id)
        if clash is not None and clash["id"] != row["id"]:
            raise Conflict(f"an endpoint named {spec.name!r} already exists")
    key = release_key(spec)
    new_release = key != row["release_key"]
    status = "BUILDING" if new_release and _needs_build(spec, base) else "READY"
    await rt.store.run(
        lambda: rt.store.endpoints.update_spec(
            row["id"],
            name=spec.name,
            spec_json=spec_to_json(spec),
            release_key=key,
            new_release=new_release,
            now=rt.clock.now(),
            release_status=status,
        )
    )
    rt.forget_endpoints()
    rt.signals.poke_scaler()
    if status == "BUILDING":
        rt.signals.builds.set()
    view = await _endpoint_view(rt, await own_endpoint(rt, who.account_id, row["id"]))
    return json_response(_shown_once(rt, view, spec, base))


@router.delete("/endpoints/{ref}", tags=["endpoints"], summary="Delete an endpoint (its workers stop)")
async def delete_endpoint(ref: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    row = await own_endpoint(rt, who.account_id, ref)
    now = rt.clock.now()
    removed = await rt.store.run(rt.store.jobs.purge_queue, row["id"], now, rt.limits.retention_run_s)
    rt.signals.metrics.jobs_finished(row["id"], "CANCELLED", removed)
    await rt.store.run(rt.store.endpoints.delete, row["id"], now)
    rt.forget_endpoints()
    rt.signals.poke_scaler()
    return json_response({"id": row["id"], "deleted": True})


@router.get("/endpoints/{ref}/workers", tags=["workers"], summary="An endpoint's workers")
async def endpoint_workers(ref: str, request: Request, includeStopped: bool = False) -> Response:  # noqa: N803
    who = caller(request)
    rt = runtime(request)
    row = await own_endpoint(rt, who.account_id, ref)
    rows = await rt.store.run(
        lambda: rt.store.workers.list(endpoint_id=row["id"], include_stopped=includeStopped)
    )
    now = rt.clock.now()
    return json_response([views.worker(r, now) for r in rows])


@router.get("/endpoints/{ref}/releases", tags=["endpoints"], summary="An endpoint's releases")
async def list_releases(ref: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    row = await own_endpoint(rt, who.account_id, ref)
    rows = await rt.store.run(rt.store.endpoints.releases, row["id"])
    return json_response([views.release(r, row["release"]) for r in rows])


@router.post(
    "/endpoints/{ref}/rollback",
    tags=["endpoints"],
    summary="Serve an earlier release again",
    openapi_extra=B.body_doc(B.Rollback, required=False),
    responses=B.error_responses(409),
)
async def rollback(ref: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    row = await own_endpoint(rt, who.account_id, ref)
    body = await B.parse_body(request, B.Rollback, BODY_LIMIT, empty={})
    releases = [
        r for r in await rt.store.run(rt.store.endpoints.releases, row["id"]) if r["status"] == "READY"
    ]
    number = body.get("release") if isinstance(body, dict) else None
    if number is None:
        earlier = [r for r in releases if r["number"] < row["release"]]
        if not earlier:
            raise Conflict("there is no earlier successful release to roll back to")
        target = earlier[-1]
    else:
        found = [r for r in releases if r["number"] == number]
        if not found:
            raise NotFound(f"release {number!r} not found or not built successfully")
        target = found[0]
    spec = spec_from_json(target["spec"])
    current = spec_from_json(row["spec"])
    # Scaling settings stay as they are now; what runs returns to the chosen release.
    spec = spec.with_changes(scaling=current.scaling, name=current.name)
    await rt.store.run(
        lambda: rt.store.endpoints.set_release(
            row["id"], target["number"], spec_to_json(spec), release_key(spec), rt.clock.now()
        )
    )
    rt.forget_endpoints()
    rt.signals.poke_scaler()
    return json_response(await _endpoint_view(rt, await own_endpoint(rt, who.account_id, row["id"])))
