"""The host's Hugging Face model cache: download once (real `huggingface_hub`), share read-only, evict LRU.

Layout under `root`: `hub/` is a standard hub cache (`models--org--name/snapshots/<sha>/…`, HF_HUB_CACHE
with HF_HOME=root); `ember/` holds Ember's records and locks. Tokens are used, never stored or logged.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

from ember.core.errors import ModelError, NotFound
from ember.fsmodes import make_readable, readable_tree
from ember.models.env import CONTAINER_HF_HOME, CacheMount, container_model_env, model_env
from ember.models.eviction import CacheEntry, EvictionPlan, plan_eviction
from ember.models.state import (
    DOWNLOADING,
    FAILED,
    READY,
    FileEntry,
    ModelStatus,
    Record,
    StateDir,
    check_repo_id,
)

log = logging.getLogger("ember.models")

ProgressFn = Callable[[int, int], None]


class _QuietTqdm(hf_tqdm):
    """huggingface_hub's progress bars, silenced: Ember reports progress from disk instead."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # huggingface_hub's is untyped


class ModelCache:
    """Download Hugging Face models once per host and hand workers a read-only, offline view of them.

    Safe across threads and processes sharing `root`: one download per repository at a time (a file
    lock); waiters reuse the result. All state lives on disk, so a new instance after a restart knows
    what is cached without a network request.
    """

    def __init__(
        self,
        root: Path,
        *,
        endpoint_url: str | None = None,
        budget_bytes: int | None = None,
        now: Callable[[], float] = time.time,
        lock_timeout_s: float = 4 * 3600.0,
        progress_interval_s: float = 0.5,
        max_workers: int = 8,
        on_download: Callable[[str, int], None] | None = None,
    ) -> None:
        """`on_download(result, size_bytes)` is told of each download this instance makes from the hub:
        result "ok" (with the model's size) or "failed" (0)."""
        self.root = Path(root).resolve()
        self.hub_dir = self.root / "hub"
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.budget_bytes = budget_bytes
        self._now = now
        self._lock_timeout_s = lock_timeout_s
        self._progress_interval_s = progress_interval_s
        self._max_workers = max_workers
        self._state = StateDir(self.root, self.hub_dir)
        self._on_download = on_download

    # ---- download --------------------------------------------------------------------------------

    def ensure(
        self,
        repo_id: str,
        revision: str | None = None,
        token: str | None = None,
        on_progress: ProgressFn | None = None,
    ) -> Path:
        """Return the snapshot path of `repo_id` at `revision` (default `main`), downloading it if needed.

        Idempotent; a cached model costs no network request. Concurrent callers wait for one download.
        `on_progress(done_bytes, total_bytes)` is called while downloading or waiting, and once at the end.
        Raises ModelError (gated without access, not found, hub unreachable), InvalidInput (bad name).
        """
        check_repo_id(repo_id)
        rev = revision or "main"
        hit = self._cached(repo_id, rev)
        if hit is not None:
            return self._finish(repo_id, hit, on_progress)
        stop = threading.Event()
        watcher = self._watch(repo_id, on_progress, stop) if on_progress else None
        try:
            with self._state.lock(repo_id, self._lock_timeout_s):
                hit = self._cached(repo_id, rev)  # another thread or process may have just finished it
                if hit is None:
                    hit = self._download(repo_id, rev, token)
        finally:
            stop.set()
            if watcher is not None:
                watcher.join(timeout=5.0)
        return self._finish(repo_id, hit, on_progress)

    def _cached(self, repo_id: str, rev: str) -> Path | None:
        rec = self._state.read(repo_id)
        if rec is None or rev not in (rec.revision, rec.sha) or not self._state.complete(rec):
            return None
        return self._state.snapshot(rec)

    def _finish(self, repo_id: str, snapshot: Path, on_progress: ProgressFn | None) -> Path:
        rec = self._state.read(repo_id)
        if rec is not None:
            rec.last_used_at = self._now()
            self._state.write(rec)
            if on_progress is not None:
                on_progress(rec.total_bytes, rec.total_bytes)
        return snapshot

    def _download(self, repo_id: str, rev: str, token: str | None) -> Path:
        api = HfApi(endpoint=self.endpoint_url, token=token or False)
        try:
            info = api.model_info(repo_id, revision=rev, files_metadata=True)
        except Exception as exc:  # noqa: BLE001 - every hub failure becomes a ModelError here
            if self._on_download is not None:
                self._on_download("failed", 0)
            raise self._error(repo_id, rev, token, exc) from None
        files = [
            FileEntry(
                path=s.rfilename,
                size_bytes=int(s.size or 0),
                blob=(s.lfs.sha256 if s.lfs is not None else s.blob_id) or "",
            )
            for s in (info.siblings or [])
        ]
        prior = self._state.read(repo_id)
        rec = Record(
            repo_id=repo_id,
            revision=rev,
            state=DOWNLOADING,
            sha=info.sha,
            files=files,
            total_bytes=sum(f.size_bytes for f in files),
            started_at=self._now(),
            last_used_at=prior.last_used_at if prior else None,
        )
        self._state.write(rec)
        log.info(
            "model.download.start repo=%s revision=%s sha=%s total_bytes=%d",
            repo_id,
            rev,
            rec.sha,
            rec.total_bytes,
        )
        try:
            path = Path(
                snapshot_download(
                    repo_id,
                    revision=rev,
                    cache_dir=self.hub_dir,
                    endpoint=self.endpoint_url,
                    token=token or False,
                    max_workers=self._max_workers,
                    tqdm_class=_QuietTqdm,
                )
            )
        except Exception as exc:  # noqa: BLE001
            err = self._error(repo_id, rev, token, exc)
            rec.state, rec.error = FAILED, err.message
            self._state.write(rec)
            log.warning("model.download.failed repo=%s revision=%s error=%s", repo_id, rev, err.message)
            if self._on_download is not None:
                self._on_download("failed", 0)
            raise err from None
        for shown in (self.root, self.hub_dir):  # sandboxed workers read the cache as uids of their own
            make_readable(shown)
        readable_tree(self._state.storage(repo_id))
        rec.sha = path.name
        rec.state, rec.error, rec.ready_at = READY, None, self._now()
        self._state.write(rec)
        log.info("model.download.done repo=%s sha=%s bytes=%d", repo_id, rec.sha, rec.total_bytes)
        if self._on_download is not None:
            self._on_download("ok", rec.total_bytes)
        return path

    def _error(self, repo_id: str, rev: str, token: str | None, exc: Exception) -> ModelError:
        if isinstance(exc, GatedRepoError):
            if token:
                msg = f"model {repo_id} is gated and the Hugging Face token given has no access to it"
            else:
                msg = f"model {repo_id} is gated: a Hugging Face token with access to it is needed"
        elif isinstance(exc, RevisionNotFoundError):
            msg = f"model {repo_id} has no revision {rev!r}"
        elif isinstance(exc, RepositoryNotFoundError):
            msg = f"model {repo_id} was not found on the hub (or it is private and needs a token with access)"
        elif isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else "?"
            msg = f"the hub answered HTTP {status} for model {repo_id}"
        else:
            msg = f"could not download model {repo_id}: {type(exc).__name__}: {exc}"
        if token:
            msg = msg.replace(token, "***")
        return ModelError(msg)

    def _watch(self, repo_id: str, on_progress: ProgressFn, stop: threading.Event) -> threading.Thread:
        def run() -> None:
            while not stop.wait(self._progress_interval_s):
                rec = self._state.read(repo_id)
                if rec is not None and rec.state == DOWNLOADING:
                    on_progress(self._state.done_bytes(rec), rec.total_bytes)

        thread = threading.Thread(target=run, name=f"model-progress-{repo_id}", daemon=True)
        thread.start()
        return thread

    # ---- inspection ------------------------------------------------------------------------------

    def status(self, repo_id: str) -> ModelStatus:
        """State, bytes done/total (measured on disk) and last use. NotFound if never asked for."""
        check_repo_id(repo_id)
        rec = self._state.read(repo_id)
        if rec is None:
            raise NotFound(f"model {repo_id} is not in this host's cache")
        return self._state.status(rec)

    def list(self) -> list[ModelStatus]:
        return [self._state.status(rec) for rec in self._state.all()]

    # ---- removal and eviction --------------------------------------------------------------------

    def remove(self, repo_id: str) -> None:
        """Delete the model's files and record (waits for a download in progress). NotFound if absent."""
        check_repo_id(repo_id)
        with self._state.lock(repo_id, self._lock_timeout_s):
            rec = self._state.read(repo_id)
            storage = self._state.storage(repo_id)
            if rec is None and not storage.exists():
                raise NotFound(f"model {repo_id} is not in this host's cache")
            self._remove_locked(repo_id)

    def _remove_locked(self, repo_id: str) -> None:
        shutil.rmtree(self._state.storage(repo_id), ignore_errors=True)
        shutil.rmtree(self.hub_dir / ".locks" / self._state.storage(repo_id).name, ignore_errors=True)
        self._state.delete(repo_id)
        log.info("model.removed repo=%s", repo_id)

    def evict(self, in_use: Collection[str] = (), budget_bytes: int | None = None) -> EvictionPlan:
        """Evict least-recently-used models until the cache fits the budget; never one in `in_use`.

        Models being downloaded are skipped too. Returns the plan that was carried out.
        """
        budget = self.budget_bytes if budget_bytes is None else budget_bytes
        entries = [
            CacheEntry(
                repo_id=rec.repo_id,
                size_bytes=self._state.size_bytes(rec.repo_id),
                last_used_at=rec.last_used_at,
                busy=self._state.is_locked(rec.repo_id),
            )
            for rec in self._state.all()
        ]
        if budget is None:
            return EvictionPlan(
                [], sum(e.size_bytes for e in entries), sum(e.size_bytes for e in entries), True
            )
        plan = plan_eviction(entries, budget, in_use)
        for repo_id in plan.evict:
            with self._state.lock(repo_id, self._lock_timeout_s):
                self._remove_locked(repo_id)
            log.info("model.evicted repo=%s budget_bytes=%d", repo_id, budget)
        return plan

    # ---- what workers get ------------------------------------------------------------------------

    def worker_env(self, repo_id: str, snapshot: Path) -> dict[str, str]:
        """Env for a worker process on this host: offline hub pointed at this cache, EMBER_MODEL_PATH."""
        return model_env(str(self.root), repo_id, str(snapshot))

    def worker_mount(
        self, repo_id: str, snapshot: Path, container_home: str = CONTAINER_HF_HOME
    ) -> tuple[CacheMount, dict[str, str]]:
        """The read-only bind mount of this cache for a container, and the env with in-container paths."""
        return container_model_env(str(self.root), str(Path(snapshot).resolve()), repo_id, container_home)
