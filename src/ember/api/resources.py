"""/v1 network volumes (RunPod's `name`, `size` in GB), the host's model cache (`/v1/models`) and account
secrets (`/v1/accounts/me/secrets`: values are stored sealed, never returned). Routes write state and start
background downloads; workers are only ever started by the lifecycle."""

from __future__ import annotations

import re
import uuid
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api import views
from ember.api.deps import Runtime, caller, read_json, runtime
from ember.api.errors import json_response
from ember.core.errors import BackendError, Conflict, InvalidInput, NotFound, Problem
from ember.core.ids import make_id
from ember.core.money import format_dollars
from ember.core.names import name_problems
from ember.core.specs import spec_from_json
from ember.store.accounts import KeyInfo

router = APIRouter(prefix="/v1")
BODY_LIMIT = 64 * 1024
SECRET_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
SECRET_MAX_CHARS = 8192
MAX_SIZE_GB = 4096


def _service(rt: Runtime, name: str) -> Any:
    svc = rt.extras.get(name)
    if svc is None:
        raise BackendError(f"{name} are not enabled on this server")
    return svc


async def _body(request: Request) -> dict[str, Any]:
    body = await read_json(request, BODY_LIMIT)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", [Problem("body", "must be a JSON object")])
    return body


async def _endpoints_using(
    rt: Runtime, account_id: str | None, *, volume: str = "", model: str = ""
) -> list[Any]:
    rows = await rt.store.run(rt.store.endpoints.list, account_id)
    out = []
    for row in rows:
        spec = spec_from_json(row["spec"])
        if (volume and spec.network_volume_id == volume) or (model and spec.model_name == model):
            out.append(row)
    return out


def _size(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIZE_GB:
        raise InvalidInput(
            "invalid volume size", [Problem("size", f"an integer number of GB, 1..{MAX_SIZE_GB}", value)]
        )
    return value


# ---- network volumes -----------------------------------------------------------------------------
async def volume_view(rt: Runtime, row: Any) -> dict[str, Any]:
    """A volume's record: its size, what it uses on this host, the endpoints of its account that mount
    it and what it has been billed. The console's volumes page shows the same record."""
    manager = _service(rt, "volumes")
    out: dict[str, Any] = {
        "id": row["id"],
        "name": row["name"],
        "size": row["size_gb"],
        "dataCenterId": "local",
        "createdAt": views.iso(row["created_at"]),
    }

    def host_facts() -> dict[str, Any]:
        try:
            info = manager.get(row["id"])
        except NotFound:
            return {"usedBytes": None, "sizeEnforced": False, "note": "missing on this host"}
        facts: dict[str, Any] = {"usedBytes": manager.usage_bytes(row["id"]), "sizeEnforced": info.enforced}
        if not info.enforced:
            facts["note"] = f"size not enforced: {info.reason}"
        return facts

    out.update(await anyio.to_thread.run_sync(host_facts))
    users = await _endpoints_using(rt, row["account_id"], volume=row["id"])
    out["endpoints"] = [{"id": e["id"], "name": e["name"]} for e in users]
    resources = rt.extras.get("resources")
    if resources is not None:
        seconds, micros = (await rt.store.run(resources.volume_billed, [row["id"]])).get(row["id"], (0, 0))
        out["billedSeconds"] = seconds
        out["billed"] = format_dollars(micros)
    return out


async def _own_volume(rt: Runtime, account_id: str, volume_id: str) -> Any:
    row = await rt.store.run(rt.store.endpoints.volume, volume_id, account_id)
    if row is None:
        raise NotFound(f"network volume {volume_id!r} not found")
    return row


@router.post(
    "/networkvolumes",
    tags=["networkvolumes"],
    summary="Create a network volume",
    status_code=201,
    openapi_extra=B.body_doc(B.VolumeCreate),
    responses=B.error_responses(502),
)
async def create_volume(request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    manager = _service(rt, "volumes")
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
            lambda: rt.store.endpoints.create_volume(
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
async def list_volumes(request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    return json_response(await volumes_of(rt, who.account_id))


async def volumes_of(rt: Runtime, account_id: str) -> list[dict[str, Any]]:
    """The records of the account's live volumes, oldest first."""
    rows = await rt.store.run(rt.store.endpoints.volumes, account_id)
    return [await volume_view(rt, r) for r in rows]


@router.get("/networkvolumes/{volume_id}", tags=["networkvolumes"], summary="One network volume, with usage")
async def get_volume(volume_id: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    return json_response(await volume_view(rt, await _own_volume(rt, who.account_id, volume_id)))


@router.patch(
    "/networkvolumes/{volume_id}",
    tags=["networkvolumes"],
    summary="Grow a network volume",
    openapi_extra=B.body_doc(B.VolumePatch),
    responses=B.error_responses(502),
)
async def update_volume(volume_id: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    manager = _service(rt, "volumes")
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
        await rt.store.run(rt.store.endpoints.resize_volume, volume_id, size_gb)
    return json_response(await volume_view(rt, await _own_volume(rt, who.account_id, volume_id)))


@router.delete(
    "/networkvolumes/{volume_id}",
    tags=["networkvolumes"],
    summary="Delete a network volume",
    responses=B.error_responses(409, 502),
)
async def delete_volume(volume_id: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    manager = _service(rt, "volumes")
    await _own_volume(rt, who.account_id, volume_id)
    users = await _endpoints_using(rt, who.account_id, volume=volume_id)
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
    await rt.store.run(rt.store.endpoints.delete_volume, volume_id, rt.clock.now())
    return json_response({"id": volume_id, "deleted": True})


# ---- models ---------------------------------------------------------------------------------------
async def model_view(rt: Runtime, who: KeyInfo, st: Any) -> dict[str, Any]:
    """A cached model's record, with the endpoints that use it: the caller's own, or every account's
    for the admin (who may remove it only when none does)."""
    scope = None if who.kind == "admin" else who.account_id
    users = await _endpoints_using(rt, scope, model=st.repo_id)
    pct = int(100 * min(st.done_bytes, st.total_bytes) / st.total_bytes) if st.total_bytes else 0
    return {
        "name": st.repo_id,
        "revision": st.revision,
        "sha": st.sha,
        "state": st.state,
        "progress": pct,
        "doneBytes": st.done_bytes,
        "totalBytes": st.total_bytes,
        "sizeBytes": st.size_bytes,
        "lastUsedAt": views.iso(st.last_used_at),
        "error": st.error,
        "path": st.snapshot_path,
        "endpoints": [{"id": e["id"], "name": e["name"]} for e in users],
    }


def visible(rt: Runtime, who: KeyInfo, repo_id: str) -> bool:
    """Whether the caller may see this model of the shared host cache: the admin sees all; an account
    the models it pulled or its endpoints use (the preparer's access record)."""
    preparer = rt.extras.get("preparer")
    return who.kind == "admin" or preparer is None or preparer.may_see(repo_id, who.account_id)


@router.get("/models", tags=["models"], summary="Models in this host's cache")
async def list_models(request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    return json_response(await models_for(rt, who))


async def models_for(rt: Runtime, who: KeyInfo) -> list[dict[str, Any]]:
    """The records of the host cache's models that the caller may see."""
    items = await anyio.to_thread.run_sync(_service(rt, "models").list)
    return [await model_view(rt, who, st) for st in items if visible(rt, who, st.repo_id)]


@router.post(
    "/models/pull",
    tags=["models"],
    summary="Download a model into the host cache (idempotent: call again to follow its progress)",
    openapi_extra=B.body_doc(B.ModelPull),
    responses={202: {"description": "Downloading"}, **B.error_responses(502)},
)
async def pull_model(request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    preparer = _service(rt, "preparer")
    body = await B.parse_body(request, B.ModelPull, BODY_LIMIT)
    name, revision = body.get("name"), body.get("revision")
    if not isinstance(name, str) or not name:
        raise InvalidInput(
            "name is required", [Problem("name", "a Hugging Face repo id like org/name", name)]
        )
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise InvalidInput("invalid revision", [Problem("revision", "a branch, tag or commit", revision)])
    from ember.models.state import check_repo_id

    try:
        check_repo_id(name)
    except InvalidInput:
        raise InvalidInput(
            "invalid model name", [Problem("name", "a Hugging Face repo id like org/name", name)]
        ) from None
    job = await preparer.start(who.account_id, name, revision)
    state = "downloading"
    if not job.running and job.snapshot is not None:
        state = "ready"
    elif not job.running and job.error is not None:
        state = "failed"
    out: dict[str, Any] = {
        "name": name,
        "revision": revision or "main",
        "state": state,
        "status": preparer.describe(job),
        "error": job.error if state == "failed" else None,
        "doneBytes": 0,
        "totalBytes": 0,
        "sizeBytes": 0,
        "path": str(job.snapshot) if state == "ready" else None,
    }
    try:
        st = await anyio.to_thread.run_sync(_service(rt, "models").status, name)
        out.update(doneBytes=st.done_bytes, totalBytes=st.total_bytes, sizeBytes=st.size_bytes)
    except NotFound:
        pass
    return json_response(out, 200 if state == "ready" else 202)


async def _model_status(rt: Runtime, who: KeyInfo, repo_id: str) -> Any:
    cache = _service(rt, "models")
    try:
        st = await anyio.to_thread.run_sync(cache.status, repo_id)
    except InvalidInput:
        raise NotFound(f"model {repo_id!r} is not in this host's cache") from None
    if not visible(rt, who, repo_id):
        raise NotFound(f"model {repo_id!r} is not in this host's cache")
    return st


@router.get("/models/{repo_id:path}", tags=["models"], summary="One cached model, with download progress")
async def get_model(repo_id: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    st = await _model_status(rt, who, repo_id)
    out = await model_view(rt, who, st)
    preparer = rt.extras.get("preparer")
    job = preparer.job_for(who.account_id, repo_id) if preparer is not None else None
    if job is not None and job.error and not job.running:
        out["error"] = job.error
    return json_response(out)


@router.delete(
    "/models/{repo_id:path}",
    tags=["models"],
    summary="Remove a model from the cache (admin)",
    responses=B.error_responses(409, 502),
)
async def remove_model(repo_id: str, request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    cache = _service(rt, "models")
    await _model_status(rt, who, repo_id)
    if who.kind != "admin":
        raise NotFound("only the operator (admin key) removes models from the host cache")
    users = await _endpoints_using(rt, None, model=repo_id)
    if users:
        names = ", ".join(f"{e['name']} ({e['id']})" for e in users)
        raise Conflict(f"model {repo_id} is used by endpoint(s) {names}; change or delete them first")
    await anyio.to_thread.run_sync(cache.remove, repo_id)
    return json_response({"name": repo_id, "deleted": True})


# ---- account secrets ------------------------------------------------------------------------------
@router.put(
    "/accounts/me/secrets",
    tags=["accounts"],
    summary="Set account secrets (e.g. HF_TOKEN)",
    openapi_extra=B.body_doc("Secrets"),
)
async def put_secrets(request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    secrets = _service(rt, "secrets")
    body = await _body(request)
    problems = []
    for name, value in body.items():
        if not SECRET_NAME_RE.match(name):
            problems.append(Problem(name, "secret names are UPPER_CASE letters, digits and _"))
        elif value is not None and (not isinstance(value, str) or not value or len(value) > SECRET_MAX_CHARS):
            # The value is never echoed back, not even in an error.
            problems.append(
                Problem(name, f"must be a non-empty string of at most {SECRET_MAX_CHARS} chars, or null")
            )
    if problems or not body:
        raise InvalidInput("invalid secrets", problems or [Problem("body", "name at least one secret")])
    names = await secrets.update(who.account_id, body)  # sealed before they are stored
    if names is None:
        raise NotFound("account not found")
    rt.signals.poke_scaler()  # endpoints waiting on a gated model retry with the new token
    return json_response({"secrets": names})


@router.get("/accounts/me/secrets", tags=["accounts"], summary="Names of the account's secrets")
async def get_secrets(request: Request) -> Response:
    who = caller(request)
    rt = runtime(request)
    return json_response({"secrets": await _service(rt, "secrets").names(who.account_id)})
