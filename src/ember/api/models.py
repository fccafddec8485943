"""/v1/models: the host's model cache (Hugging Face snapshots shared by every account's endpoints): list,
pull (a background download), get with its progress, and remove (the admin's only)."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api import views
from ember.api.deps import CallerDep, Runtime, RuntimeDep
from ember.api.endpoints import endpoints_using
from ember.api.errors import json_response
from ember.api.services import required
from ember.core.errors import Conflict, InvalidInput, NotFound, Problem
from ember.models.state import ModelStatus
from ember.store.accounts import KeyInfo

router = APIRouter(prefix="/v1")
BODY_LIMIT = 64 * 1024


async def model_view(rt: Runtime, who: KeyInfo, st: ModelStatus) -> dict[str, object]:
    """A cached model's record, with the endpoints that use it: the caller's own, or every account's
    for the admin (who may remove it only when none does)."""
    scope = None if who.kind == "admin" else who.account_id
    users = await endpoints_using(rt, scope, model=st.repo_id)
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
    preparer = rt.services.preparer
    return who.kind == "admin" or preparer is None or preparer.may_see(repo_id, who.account_id)


@router.get("/models", tags=["models"], summary="Models in this host's cache")
async def list_models(who: CallerDep, rt: RuntimeDep) -> Response:
    return json_response(await models_for(rt, who))


async def models_for(rt: Runtime, who: KeyInfo) -> list[dict[str, object]]:
    """The records of the host cache's models that the caller may see."""
    items = await anyio.to_thread.run_sync(required(rt.services.models, "models").list)
    return [await model_view(rt, who, st) for st in items if visible(rt, who, st.repo_id)]


@router.post(
    "/models/pull",
    tags=["models"],
    summary="Download a model into the host cache (idempotent: call again to follow its progress)",
    openapi_extra=B.body_doc(B.ModelPull),
    responses={202: {"description": "Downloading"}, **B.error_responses(502)},
)
async def pull_model(request: Request, who: CallerDep, rt: RuntimeDep) -> Response:
    preparer = required(rt.services.preparer, "preparer")
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
    out: dict[str, object] = {
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
        st = await anyio.to_thread.run_sync(required(rt.services.models, "models").status, name)
        out.update(doneBytes=st.done_bytes, totalBytes=st.total_bytes, sizeBytes=st.size_bytes)
    except NotFound:
        pass
    return json_response(out, 200 if state == "ready" else 202)


async def _model_status(rt: Runtime, who: KeyInfo, repo_id: str) -> ModelStatus:
    cache = required(rt.services.models, "models")
    try:
        st = await anyio.to_thread.run_sync(cache.status, repo_id)
    except InvalidInput:
        raise NotFound(f"model {repo_id!r} is not in this host's cache") from None
    if not visible(rt, who, repo_id):
        raise NotFound(f"model {repo_id!r} is not in this host's cache")
    return st


@router.get("/models/{repo_id:path}", tags=["models"], summary="One cached model, with download progress")
async def get_model(repo_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    st = await _model_status(rt, who, repo_id)
    out = await model_view(rt, who, st)
    preparer = rt.services.preparer
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
async def remove_model(repo_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    cache = required(rt.services.models, "models")
    await _model_status(rt, who, repo_id)
    if who.kind != "admin":
        raise NotFound("only the operator (admin key) removes models from the host cache")
    users = await endpoints_using(rt, None, model=repo_id)
    if users:
        names = ", ".join(f"{e['name']} ({e['id']})" for e in users)
        raise Conflict(f"model {repo_id} is used by endpoint(s) {names}; change or delete them first")
    await anyio.to_thread.run_sync(cache.remove, repo_id)
    return json_response({"name": repo_id, "deleted": True})
