"""Uploaded sources: what `POST /v1/sources` keeps, one directory per upload under `root`
(`EMBER_HOME/uploads/<id>/`): the unpacked tree (`tree/`) and its record (`source.json`: the owning
account, the tree's digest, size and file count).

An endpoint names an upload by id (`sourceId`); the server snapshots its tree as it snapshots the
admin's `sourceDir` (`build.source.snapshot`), so the handler and requirements are found the same
way. An upload is written beside its place and renamed into it whole; another account's id, like an
unknown one, is not found. The tree lives on the server's disk, as snapshots and venvs do."""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from ember.build.archive import ArchiveLimits, unpack
from ember.build.source import digest_dir
from ember.core.errors import NotFound
from ember.core.ids import is_safe_id, kind_of

RECORD = "source.json"
TREE = "tree"


@dataclass(frozen=True)
class Upload:
    id: str
    account_id: str
    digest: str
    size: int
    files: int
    created_at: float
    tree: Path


class Uploads:
    def __init__(self, root: Path, limits: ArchiveLimits) -> None:
        self.root = root
        self.limits = limits

    def save(self, source_id: str, account_id: str, data: bytes, now: float) -> Upload:
        """Unpack `data` (tar or tar.gz) as upload `source_id` of `account_id`.

        Raises InvalidInput (a refused member, not an archive) or PayloadTooLarge (see `archive.unpack`);
        nothing of the upload is left then."""
        work = self.root / f".{source_id}.{uuid.uuid4().hex[:8]}.tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        work.mkdir(mode=0o700)
        try:
            unpacked = unpack(data, work / TREE, self.limits)
            record = {
                "id": source_id,
                "accountId": account_id,
                "digest": digest_dir(work / TREE),
                "size": unpacked.size,
                "files": unpacked.files,
                "createdAt": now,
            }
            (work / RECORD).write_text(json.dumps(record))
            work.rename(self.root / source_id)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self._upload(record)

    def get(self, source_id: str, account_id: str) -> Upload:
        """The account's upload `source_id`; NotFound when there is none (or it is another account's)."""
        missing = NotFound(f"source {source_id!r} not found")
        if not isinstance(source_id, str) or not is_safe_id(source_id) or kind_of(source_id) != "source":
            raise missing
        try:
            record = json.loads((self.root / source_id / RECORD).read_text())
        except (OSError, ValueError):
            raise missing from None
        if record.get("accountId") != account_id:
            raise missing
        return self._upload(record)

    def _upload(self, record: dict[str, object]) -> Upload:
        source_id = str(record["id"])
        return Upload(
            id=source_id,
            account_id=str(record["accountId"]),
            digest=str(record["digest"]),
            size=int(record["size"]),  # type: ignore[call-overload]
            files=int(record["files"]),  # type: ignore[call-overload]
            created_at=float(record["createdAt"]),  # type: ignore[arg-type]
            tree=self.root / source_id / TREE,
        )
