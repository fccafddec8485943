"""/v1 endpoint releases: each change of what an endpoint runs is a numbered release (`api.endpoints`);
list them, and roll back to an earlier one that built. A release's build log is `api.git`'s."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api import views
from ember.api.deps import CallerDep, RuntimeDep, own_endpoint
from ember.api.endpoints import endpoint_view
from ember.api.errors import json_response
from ember.core.errors import Conflict, NotFound
from ember.core.specs import release_key, spec_from_json, spec_to_json

router = APIRouter(prefix="/v1")
BODY_LIMIT = 1024 * 1024


@router.get("/endpoints/{ref}/releases", tags=["endpoints"], summary="An endpoint's releases")
async def list_releases(ref: str, who: CallerDep, rt: RuntimeDep) -> Response:
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
async def rollback(ref: str, request: Request, who: CallerDep, rt: RuntimeDep) -> Response:
    row = await own_endpoint(rt, who.account_id, ref)
    # Read here, not as a dependency: an unknown endpoint is a 404 whatever the body.
    body = await B.parse_body(request, B.Rollback, BODY_LIMIT, empty={})
    releases = [
        r for r in await rt.store.run(rt.store.endpoints.releases, row["id"]) if r["status"] == "READY"
    ]
    number = body.get("release")
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
    with rt.signals.in_txn(("c", "endpoints")):
        await rt.store.run(
            lambda: rt.store.endpoints.set_release(
                row["id"], target["number"], spec_to_json(spec), release_key(spec), rt.clock.now()
            )
        )
    rt.signals.caches_changed("endpoints")
    rt.signals.poke_scaler()
    return json_response(await endpoint_view(rt, await own_endpoint(rt, who.account_id, row["id"])))
