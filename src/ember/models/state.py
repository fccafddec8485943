"""The model cache's state on disk: one JSON record and one lock file per repository, progress from blobs.

Everything here is re-read from disk on each call, so a restarted process (or another process) sees the
same truth. It never talks to the network and never stores a token.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ember.core.errors import InvalidInput, ModelError, Problem

REPO_ID_RE = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")

DOWNLOADING = "downloading"
READY = "ready"
FAILED = "failed"
INTERRUPTED = "interrupted"  # derived: a "downloading" record whose lock nobody holds (the process died)


def check_repo_id(repo_id: str) -> str:
    """Return `repo_id` if it names a Hugging Face model (`org/name` or `name`); else InvalidInput."""
    if not isinstance(repo_id, str) or not REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise InvalidInput(
            "invalid model name", [Problem("model", "expected a Hugging Face repo id like org/name", repo_id)]
        )
    return repo_id


def repo_folder(repo_id: str) -> str:
    """The hub cache's folder name for a model repository (`models--org--name`)."""
    return "models--" + repo_id.replace("/", "--")


@dataclass
class FileEntry:
    path: str
    size_bytes: int
    blob: str  # the blob's file name in the hub cache (LFS sha256, else git blob id)


@dataclass
class Record:
    """What Ember knows about one cached repository (persisted as JSON)."""

    repo_id: str
    revision: str
    state: str
    sha: str | None = None
    files: list[FileEntry] = field(default_factory=list)
    total_bytes: int = 0
    error: str | None = None
    started_at: float | None = None
    ready_at: float | None = None
    last_used_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Record:
        raw = json.loads(text)
        raw["files"] = [FileEntry(**f) for f in raw.get("files", [])]
        return cls(**raw)


@dataclass(frozen=True)
class ModelStatus:
    """A model's state as `status()` and `list()` report it; `done_bytes` is measured on disk."""

    repo_id: str
    revision: str
    state: str
    sha: str | None
    done_bytes: int
    total_bytes: int
    size_bytes: int
    last_used_at: float | None
    error: str | None
    snapshot_path: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class StateDir:
    """Records under `<root>/ember/models/`, locks under `<root>/ember/locks/`, the hub cache at `hub_dir`."""

    def __init__(self, root: Path, hub_dir: Path) -> None:
        self.records_dir = root / "ember" / "models"
        self.locks_dir = root / "ember" / "locks"
        self.hub_dir = hub_dir
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        hub_dir.mkdir(parents=True, exist_ok=True)

    def record_path(self, repo_id: str) -> Path:
        return self.records_dir / f"{repo_folder(repo_id)}.json"

    def storage(self, repo_id: str) -> Path:
        return self.hub_dir / repo_folder(repo_id)

    def read(self, repo_id: str) -> Record | None:
        try:
            return Record.from_json(self.record_path(repo_id).read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError):
            return None  # a torn or foreign file: treat as unknown, the next ensure rewrites it

    def write(self, rec: Record) -> None:
        """Atomic replace, so readers in other processes never see half a record. The temporary file is
        this thread's own: two threads of one process writing the same record at once (the waiters of
        one download each record their use) must not rename each other's file away."""
        path = self.record_path(rec.repo_id)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(rec.to_json())
        os.replace(tmp, path)

    def delete(self, repo_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_path(repo_id).unlink()

    def all(self) -> list[Record]:
        out = []
        for p in sorted(self.records_dir.glob("models--*.json")):
            with contextlib.suppress(FileNotFoundError, ValueError, TypeError, KeyError):
                out.append(Record.from_json(p.read_text()))
        return out

    # ---- locks -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, repo_id: str, timeout_s: float, poll_s: float = 0.05) -> Iterator[None]:
        """Exclusive per-repository lock, across threads and processes (flock on its own descriptor)."""
        fd = os.open(self.locks_dir / f"{repo_folder(repo_id)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    raise ModelError(
                        f"timed out after {timeout_s:.0f}s waiting for the download of {repo_id}"
                    )
                time.sleep(poll_s)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def is_locked(self, repo_id: str) -> bool:
        path = self.locks_dir / f"{repo_folder(repo_id)}.lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    # ---- measurements ----------------------------------------------------------------------------

    def done_bytes(self, rec: Record) -> int:
        """Bytes of the record's files on disk: finished blobs plus partial ones. `huggingface_hub` writes
        a blob to `<blob>.incomplete` (before 1.x) or to a per-process `<blob>.<random>.incomplete`, then
        renames it; the largest partial file of a blob counts."""
        blobs = self.storage(rec.repo_id) / "blobs"
        partial: dict[str, int] = {}
        try:
            names = os.listdir(blobs)
        except FileNotFoundError:
            return 0
        for name in names:
            if name.endswith(".incomplete"):
                with contextlib.suppress(FileNotFoundError):
                    size = (blobs / name).stat().st_size
                    blob = name.split(".", 1)[0]
                    partial[blob] = max(partial.get(blob, 0), size)
        done = 0
        for f in rec.files:
            try:
                size = (blobs / f.blob).stat().st_size
            except FileNotFoundError:
                size = partial.get(f.blob, 0)
            done += min(size, f.size_bytes)
        return done

    def size_bytes(self, repo_id: str) -> int:
        """Disk bytes of the repository's real files (symlinks not counted twice)."""
        total = 0
        storage = self.storage(repo_id)
        if not storage.exists():
            return 0
        for dirpath, _dirs, files in os.walk(storage):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(os.path.join(dirpath, name))
                    if not os.path.islink(os.path.join(dirpath, name)):
                        total += st.st_size
        return total

    def snapshot(self, rec: Record) -> Path | None:
        if rec.sha is None:
            return None
        path = self.storage(rec.repo_id) / "snapshots" / rec.sha
        return path if path.is_dir() else None

    def complete(self, rec: Record) -> bool:
        """A ready record whose snapshot has every file it listed."""
        snap = self.snapshot(rec)
        return rec.state == READY and snap is not None and all((snap / f.path).exists() for f in rec.files)

    def status(self, rec: Record) -> ModelStatus:
        state = rec.state
        if state == DOWNLOADING and not self.is_locked(rec.repo_id):
            state = INTERRUPTED
        snap = self.snapshot(rec) if rec.state == READY else None
        return ModelStatus(
            repo_id=rec.repo_id,
            revision=rec.revision,
            state=state,
            sha=rec.sha,
            done_bytes=rec.total_bytes if rec.state == READY else self.done_bytes(rec),
            total_bytes=rec.total_bytes,
            size_bytes=self.size_bytes(rec.repo_id),
            last_used_at=rec.last_used_at,
            error=rec.error,
            snapshot_path=str(snap) if snap else None,
        )
