"""/v1/sources: uploaded source archives, how a tenant deploys a directory (only the admin may name a
host path, `sourceDir`). `POST /v1/sources` takes a tar or tar.gz body (`ember deploy DIR` packs one)
and answers `{"id": "src-…", "digest", "size", "files", "createdAt"}`; an endpoint then names it with
`{"sourceId": "src-…"}`. The archive is unpacked strictly (`build.archive`): a member with an absolute
name, `..`, a link out of the archive or a device is a 400 naming it, and nothing is written. Uploads
belong to their account: another account's id is not found."""

from __future__ import annotations

import uuid

import anyio.to_thread
from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api import views
from ember.api.deps import CallerDep, Runtime, RuntimeDep, read_body
from ember.api.errors import json_response
from ember.build.archive import ArchiveLimits
from ember.build.uploads import Upload, Uploads
from ember.core.errors import InvalidInput, Problem
from ember.core.ids import make_id

router = APIRouter(prefix="/v1")
CONTENT_TYPES = (
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/x-gtar",
    "application/octet-stream",
)
_ARCHIVE = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["id", "digest", "size", "files", "createdAt"],
    "properties": {
        "id": {"type": "string", "description": "the upload's id (src-…), an endpoint's `sourceId`"},
        "digest": {"type": "string", "description": "content digest of the unpacked files"},
        "size": {"type": "integer", "description": "bytes of file content unpacked"},
        "files": {"type": "integer"},
        "createdAt": {"type": "string", "format": "date-time"},
    },
}
UPLOAD_DOC: dict[str, object] = {
    "requestBody": {
        "required": True,
        "description": "A tar archive, gzip'd or not, of the directory (its root is the archive's root)",
        "content": {ctype: _ARCHIVE for ctype in CONTENT_TYPES[:3]},
    },
    "responses": {
        "201": {
            "description": "Unpacked and kept for the caller's account",
            "content": {"application/json": {"schema": _UPLOAD_SCHEMA}},
        }
    },
}


def uploads(rt: Runtime) -> Uploads:
    """The server's uploads; a runtime built without them (a test's) uses the defaults under its home."""
    found = rt.services.uploads
    return found if found is not None else Uploads(rt.shared / "uploads", ArchiveLimits())


def _view(upload: Upload) -> dict[str, object]:
    return {
        "id": upload.id,
        "digest": upload.digest,
        "size": upload.size,
        "files": upload.files,
        "createdAt": views.iso(upload.created_at),
    }


async def own_upload(rt: Runtime, account_id: str, source_id: str) -> Upload:
    """The account's upload; NotFound (404) when it is unknown or another account's."""
    return await anyio.to_thread.run_sync(uploads(rt).get, source_id, account_id)


@router.post(
    "/sources",
    tags=["sources"],
    summary="Upload a source directory as a tar or tar.gz archive",
    status_code=201,
    openapi_extra=UPLOAD_DOC,
)
async def upload_source(request: Request, who: CallerDep, rt: RuntimeDep) -> Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in CONTENT_TYPES:
        raise InvalidInput(
            f"send the archive as application/gzip or application/x-tar, not {ctype or 'no type'!r}",
            [Problem("Content-Type", f"must be one of {', '.join(CONTENT_TYPES)}", ctype or None)],
        )
    store = uploads(rt)
    data = await read_body(request, store.limits.compressed_bytes)
    source_id = make_id("source", uuid.uuid4().hex[:16])
    upload = await anyio.to_thread.run_sync(store.save, source_id, who.account_id, data, rt.clock.now())
    return json_response(_view(upload), 201)


@router.get("/sources/{source_id}", tags=["sources"], summary="One uploaded source of the caller's account")
async def get_source(source_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    return json_response(_view(await own_upload(rt, who.account_id, source_id)))
