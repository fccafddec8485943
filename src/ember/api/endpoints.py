"""/v1 endpoints: create, list, get, update (a change of what runs makes a release, `api.releases`),
delete, and their workers. Field names are RunPod's REST names (`core.specs.WIRE_FIELDS`)."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api import sources, views
from ember.api.deps import CallerDep, Runtime, RuntimeDep, caller, own_endpoint
from ember.api.errors import json_response
from ember.api.git import normalise_git, webhook_secret
from ember.api.registry_auth import require_owned
from ember.api.templates import TEMPLATE_FIELDS, own_template, stored_data
from ember.build.source import snapshot
from ember.core.errors import Conflict, Forbidden, InvalidInput, Problem
from ember.core.ids import make_id
from ember.core.json_body import JsonObject
from ember.core.specs import EndpointSpec, from_wire, release_key, spec_from_json, spec_to_json
from ember.store.rows import EndpointRow

# The event that tells every process to drop its cached endpoints (`Signals.caches_changed`).
ENDPOINTS_CHANGED = ("c", "endpoints")
router = APIRouter(prefix="/v1")
BODY_LIMIT = 1024 * 1024


async def _resolve_spec(
    rt: Runtime, account_id: str, body: JsonObject, base: EndpointSpec | None, *, admin: bool
) -> EndpointSpec:
    body = B.integers(B.EndpointBody, body)
    template_id = body.get("templateId")
    if template_id is not None and not isinstance(template_id, str):
        raise InvalidInput(
            "templateId must be a template id (a string)",
            [Problem("templateId", "must be a string or null", template_id)],
        )
    if template_id:
        tpl = stored_data(await own_template(rt, account_id, template_id))
        for key in TEMPLATE_FIELDS:
            if key in tpl and key not in body:
                body[key] = tpl[key]
        tpl_env, env = tpl.get("env"), body.get("env")
        if isinstance(tpl_env, dict) and isinstance(env, dict):  # the body's variables win
            body["env"] = {**tpl_env, **env}
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
        sealer = rt.services.sealer
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
        vol = await rt.store.run(rt.store.volumes.get, spec.network_volume_id, account_id)
        if vol is None:
            raise InvalidInput(
                f"network volume {spec.network_volume_id!r} not found",
                [Problem("networkVolumeId", "not found", spec.network_volume_id)],
            )
    await require_owned(rt, account_id, spec.container_registry_auth_id)
    preparer = rt.services.preparer
    if preparer is not None:
        spec = await preparer.on_spec(account_id, spec)
    return spec


def _one_source(body: JsonObject, base: EndpointSpec | None, *, admin: bool) -> None:
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
        functools.partial(snapshot, source_dir, rt.shared / "sources", handler, label=label)
    )


def _needs_build(spec: EndpointSpec, base: EndpointSpec | None = None) -> bool:
    """A git endpoint builds when created, when its git source changes, or while nothing has built yet;
    other changes (env, command) reuse the image that serves."""
    if not spec.git:
        return False
    if base is None or not base.image_name or not base.git:
        return True
    return any(spec.git.get(k) != base.git.get(k) for k in ("url", "branch", "dockerfile", "context"))


async def endpoint_view(rt: Runtime, row: EndpointRow) -> dict[str, object]:
    """The endpoint's record (`views.endpoint`) with the counts of its workers by state."""
    workers = await rt.store.run(lambda: rt.store.workers.list(endpoint_id=row["id"]))
    return views.endpoint(row, owner=True, workers=list(workers))


def _shown_once(
    rt: Runtime, view: dict[str, object], spec: EndpointSpec, base: EndpointSpec | None
) -> dict[str, object]:
    """The view, with the git webhook secret in the clear when this request set it: the one answer
    that shows it (it is stored sealed, and never returned again)."""
    secret = (spec.git or {}).get("webhookSecret")
    shown = view.get("git")
    if (
        secret
        and isinstance(shown, dict)
        and secret != ((base.git if base else None) or {}).get("webhookSecret")
    ):
        view["git"] = {**shown, "webhookSecret": webhook_secret(rt, spec.git or {})}
    return view


@router.post(
    "/endpoints",
    tags=["endpoints"],
    summary="Create an endpoint",
    status_code=201,
    openapi_extra=B.body_doc(B.EndpointBody),
    responses=B.error_responses(403, 409, 502),
)
async def create_endpoint(
    who: CallerDep, rt: RuntimeDep, body: Annotated[JsonObject, Depends(B.ObjectBody(BODY_LIMIT))]
) -> Response:
    spec = await _resolve_spec(rt, who.account_id, body, None, admin=who.kind == "admin")
    existing = await rt.store.run(rt.store.endpoints.get, spec.name, who.account_id)
    if existing is not None and existing["name"] == spec.name:
        raise Conflict(
            f"an endpoint named {spec.name!r} already exists ({existing['id']}); update it with PATCH"
        )
    endpoint_id = make_id("endpoint", uuid.uuid4().hex[:12])
    status = "BUILDING" if _needs_build(spec) else "READY"
    with rt.signals.in_txn(ENDPOINTS_CHANGED):  # a "not found" cached elsewhere is stale now
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
    view = await _changed(rt, who.account_id, endpoint_id, status)
    return json_response(_shown_once(rt, view, spec, None), 201)


async def _changed(rt: Runtime, account_id: str, endpoint_id: str, status: str) -> dict[str, object]:
    """After an endpoint was created or changed: drop the cached copies, wake the scaler (and the builder
    for a release that builds), and return its record as it is now."""
    rt.signals.caches_changed(ENDPOINTS_CHANGED[1])
    rt.signals.poke_scaler()
    if status == "BUILDING":
        rt.signals.builds.set()
    return await endpoint_view(rt, await own_endpoint(rt, account_id, endpoint_id))


@router.get("/endpoints", tags=["endpoints"], summary="List endpoints")
async def list_endpoints(who: CallerDep, rt: RuntimeDep) -> Response:
    rows = await rt.store.run(rt.store.endpoints.list, who.account_id)
    return json_response([await endpoint_view(rt, r) for r in rows])


@router.get("/endpoints/{ref}", tags=["endpoints"], summary="One endpoint, with its scaling verdict")
async def get_endpoint(ref: str, who: CallerDep, rt: RuntimeDep) -> Response:
    return json_response(await endpoint_view(rt, await own_endpoint(rt, who.account_id, ref)))


@router.patch(
    "/endpoints/{ref}",
    tags=["endpoints"],
    summary="Update an endpoint",
    openapi_extra=B.body_doc(B.EndpointPatch),
    responses=B.error_responses(403, 409, 502),
)
async def update_endpoint(ref: str, request: Request, who: CallerDep, rt: RuntimeDep) -> Response:
    row = await own_endpoint(rt, who.account_id, ref)
    # Read here, not as a dependency: an unknown endpoint is a 404 whatever the body.
    body = await B.json_object(request, BODY_LIMIT)
    base = spec_from_json(row["spec"])
    spec = await _resolve_spec(rt, who.account_id, body, base, admin=who.kind == "admin")
    if spec.name != row["name"]:
        clash = await rt.store.run(rt.store.endpoints.get, spec.name, who.account_id)
        if clash is not None and clash["id"] != row["id"]:
            raise Conflict(f"an endpoint named {spec.name!r} already exists")
    key = release_key(spec)
    new_release = key != row["release_key"]
    status = "BUILDING" if new_release and _needs_build(spec, base) else "READY"
    with rt.signals.in_txn(ENDPOINTS_CHANGED):
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
    view = await _changed(rt, who.account_id, row["id"], status)
    return json_response(_shown_once(rt, view, spec, base))


@router.delete("/endpoints/{ref}", tags=["endpoints"], summary="Delete an endpoint (its workers stop)")
async def delete_endpoint(ref: str, who: CallerDep, rt: RuntimeDep) -> Response:
    row = await own_endpoint(rt, who.account_id, ref)
    now = rt.clock.now()
    removed = await rt.store.run(rt.store.jobs.purge_queue, row["id"], now, rt.limits.retention_run_s)
    rt.signals.metrics.jobs_finished(row["id"], "CANCELLED", removed)
    with rt.signals.in_txn(ENDPOINTS_CHANGED):
        await rt.store.run(rt.store.endpoints.delete, row["id"], now)
    rt.signals.caches_changed(ENDPOINTS_CHANGED[1])
    rt.signals.poke_scaler()
    return json_response({"id": row["id"], "deleted": True})


@router.get("/endpoints/{ref}/workers", tags=["workers"], summary="An endpoint's workers")
async def endpoint_workers(
    ref: str,
    request: Request,
    rt: RuntimeDep,
    includeStopped: bool = False,  # noqa: N803
) -> Response:
    who = await caller(request)  # not a dependency: a bad `includeStopped` answers 400 before a bad key
    row = await own_endpoint(rt, who.account_id, ref)
    rows = await rt.store.run(
        lambda: rt.store.workers.list(endpoint_id=row["id"], include_stopped=includeStopped)
    )
    now = rt.clock.now()
    return json_response([views.worker(r, now) for r in rows])


async def endpoints_using(
    rt: Runtime, account_id: str | None, *, volume: str = "", model: str = ""
) -> list[EndpointRow]:
    """The account's endpoints (every account's for None) that mount `volume` or use `model`."""
    rows = await rt.store.run(rt.store.endpoints.list, account_id)
    out: list[EndpointRow] = []
    for row in rows:
        spec = spec_from_json(row["spec"])
        if (volume and spec.network_volume_id == volume) or (model and spec.model_name == model):
            out.append(row)
    return out
