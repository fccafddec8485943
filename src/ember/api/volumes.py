"""/v1/networkvolumes: an account's network volumes in RunPod's shape (`name`, `size` in GB), each a
directory on this host that endpoints mount; create, list, get, grow, delete."""

from __future__ import annotations

import uuid

import anyio.to_thread
from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api import views
from ember.api.deps import CallerDep, Runtime, RuntimeDep, found
from ember.api.endpoints import endpoints_using
from ember.api.errors import json_response
from ember.api.services import required
from ember.core.errors import Conflict, InvalidInput, NotFound, Problem
from ember.core.ids import make_id
from ember.core.money import format_dollars
from ember.core.names import name_problems
from ember.store.rows import VolumeRow

router = APIRouter(prefix="/v1")
BODY_LIMIT = 64 * 1024
MAX_SIZE_GB = 4096


def _size(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIZE_GB:
        raise InvalidInput(
            "invalid volume size", [Problem("size", f"an integer number of GB, 1..{MAX_SIZE_GB}", value)]
        )
    return value


async def volume_view(rt: Runtime, row: VolumeRow) -> dict[str, object]:
    """A volume's record: its size, what it uses on this host, the endpoints of its account that mount
    it and what it has been billed. The console's volumes page shows the same record."""
    manager = required(rt.services.volumes, "volumes")
    out: dict[str, object] = {
        "id": row["id"],
        "name": row["name"],
        "size": row["size_gb"],
        "dataCenterId": "local",
        "createdAt": views.iso(row["created_at"]),
    }

    def host_facts() -> dict[str, object]:
        try:
            info = manager.get(row["id"])
        except NotFound:
            return {"usedBytes": None, "sizeEnforced": False, "note": "missing on this host"}
        facts: dict[str, object] = {
            "usedBytes": manager.usage_bytes(row["id"]),
            "sizeEnforced": info.enforced,
        }
        if not info.enforced:
            facts["note"] = f"size not enforced: {info.reason}"
        return facts

    out.update(await anyio.to_thread.run_sync(host_facts))
    users = await endpoints_using(rt, row["account_id"], volume=row["id"])
    out["endpoints"] = [{"id": e["id"], "name": e["name"]} for e in users]
    seconds, micros = (await rt.store.run(rt.store.volumes.billed, [row["id"]])).get(row["id"], (0, 0))
    out["billedSeconds"] = seconds
    out["billed"] = format_dollars(micros)
    return out


async def _own_volume(rt: Runtime, account_id: str, volume_id: str) -> VolumeRow:
    return await found(rt, f"network volume {volume_id!r}", rt.store.volumes.get, volume_id, account_id)


@router.post(
    "/networkvolumes",
    tags=["networkvolumes"],
    summary="Create a network volume",
    status_code=201,
    openapi_extra=B.body_doc(B.VolumeCreate),
    responses=B.error_responses(502),
)
async def create_volume(request: Request, who: CallerDep, rt: RuntimeDep) -> Response:
    manager = required(rt.services.volumes, "volumes")
    body = await B.parse_body(request, B.VolumeCreate, BODY_LIMIT)
    name = body.get("name")
    problems = name_problems(name.strip() if isinstance(name, str) else name)
    if problems or not isinstance(name, str):
        raise InvalidInput("invalid volume name: " + "; ".join(p.message for p in problems), problems)
    size_gb = _size(body.get("size"))
    volume_id = make_id("volume", uuid.uuid4().hex[:12])
    await anyio.to_thread.run_sync(manager.create, volume_id, size_gb)
    try:
        await rt.store.run(
            lambda: rt.store.volumes.create(
                id=volume_id,
                account_id=who.account_id,
                name=name.strip(),
                size_gb=size_gb,
                now=rt.clock.now(),
            )
        )
    except Exception:
        await anyio.to_thread.run_sync(manager.delete, volume_id)
        raise
    row = await _own_volume(rt, who.account_id, volume_id)
    return json_response(await volume_view(rt, row), 201)


@router.get("/networkvolumes", tags=["networkvolumes"], summary="List network volumes")
async def list_volumes(who: CallerDep, rt: RuntimeDep) -> Response:
    return json_response(await volumes_of(rt, who.account_id))


async def volumes_of(rt: Runtime, account_id: str) -> list[dict[str, object]]:
    """The records of the account's live volumes, oldest first."""
    rows = await rt.store.run(rt.store.volumes.list, account_id)
    return [await volume_view(rt, r) for r in rows]


@router.get("/networkvolumes/{volume_id}", tags=["networkvolumes"], summary="One network volume, with usage")
async def get_volume(volume_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    return json_response(await volume_view(rt, await _own_volume(rt, who.account_id, volume_id)))


@router.patch(
    "/networkvolumes/{volume_id}",
    tags=["networkvolumes"],
    summary="Grow a network volume",
    openapi_extra=B.body_doc(B.VolumePatch),
    responses=B.error_responses(502),
)
async def update_volume(volume_id: str, request: Request, who: CallerDep, rt: RuntimeDep) -> Response:
    manager = required(rt.services.volumes, "volumes")
    row = await _own_volume(rt, who.account_id, volume_id)
    body = await B.parse_body(request, B.VolumePatch, BODY_LIMIT)
    if "name" in body and body["name"] != row["name"]:
        raise InvalidInput("a volume cannot be renamed", [Problem("name", "cannot be changed", body["name"])])
    if "size" in body:
        size_gb = _size(body["size"])
        if size_gb < row["size_gb"]:
            raise InvalidInput(
                "volumes can only grow",
                [Problem("size", f"must be at least the current size, {row['size_gb']} GB", size_gb)],
            )
        await anyio.to_thread.run_sync(manager.resize, volume_id, size_gb)
        await rt.store.run(rt.store.volumes.resize, volume_id, size_gb)
    return json_response(await volume_view(rt, await _own_volume(rt, who.account_id, volume_id)))


@router.delete(
    "/networkvolumes/{volume_id}",
    tags=["networkvolumes"],
    summary="Delete a network volume",
    responses=B.error_responses(409, 502),
)
async def delete_volume(volume_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    manager = required(rt.services.volumes, "volumes")
    await _own_volume(rt, who.account_id, volume_id)
    users = await endpoints_using(rt, who.account_id, volume=volume_id)
    if users:
        names = ", ".join(f"{e['name']} ({e['id']})" for e in users)
        raise Conflict(
            f"network volume {volume_id} is attached to endpoint(s) {names}: detach it "
            "(PATCH the endpoint with networkVolumeId null) or delete those endpoints first; "
            "its data would be lost"
        )

    def remove() -> None:
        try:
            manager.delete(volume_id)
        except NotFound:
            pass  # already gone from this host; the record goes too

    await anyio.to_thread.run_sync(remove)
    await rt.store.run(rt.store.volumes.delete, volume_id, rt.clock.now())
    return json_response({"id": volume_id, "deleted": True})
