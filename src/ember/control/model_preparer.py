"""Models for workers: the lifecycle asks `ModelPreparer.ready()` before it creates or starts workers of
an endpoint that names a Hugging Face model (the download runs in a background thread, before any worker
exists, so nobody is billed for it); its launch hook adds the model cache's mount. (The volume's mount is
`control.volume_mounts`; the cache itself is the `models` package.)"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread

from ember.backends.base import Mount
from ember.control.clock import Clock
from ember.control.secrets import AccountSecrets
from ember.core.errors import EmberError, InvalidInput, ModelError, NotFound, Problem
from ember.core.specs import EndpointSpec, spec_from_json
from ember.models.cache import ModelCache
from ember.models.env import repo_cache_dir
from ember.models.state import READY, check_repo_id
from ember.store.facade import Store

log = logging.getLogger("ember.models")
STATUS_PREFIX = "preparing model "
TOKEN_SECRET = "HF_TOKEN"
TOKEN_HINT = 'store one with PUT /v1/accounts/me/secrets {"HF_TOKEN": "hf_..."}'


def _fingerprint(token: str | None) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else ""


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1_000_000:.1f}"


@dataclass
class _Job:
    """One background preparation of (account, model, revision)."""

    account_id: str
    repo_id: str
    revision: str
    token_fp: str
    thread: threading.Thread | None = None
    snapshot: Path | None = None
    error: str | None = None
    finished_at: float | None = None
    evicted: bool = False
    # The account may see the model's record: it fetches the model itself, or passed the hub's access check.
    cleared: bool = False

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


@dataclass
class ModelPreparer:
    """Gets models ready for endpoints: one background download per (account, model, revision) at a
    time (the cache's file lock makes it one per host), retried `retry_s` after a failure or at once
    when the account's token changes. Accounts other than the first one to fetch a model pass one
    access check against the hub (so a gated model cached with one account's token is not served to
    another account without access); grants persist in `access_path`."""

    cache: ModelCache
    store: Store
    clock: Clock
    retry_s: float = 30.0
    access_path: Path | None = None
    secrets: AccountSecrets | None = None  # opens the account's sealed HF_TOKEN
    _jobs: dict[tuple[str, str, str], _Job] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _active: Counter[str] = field(default_factory=Counter)  # repo -> jobs running in this process

    # ---- the lifecycle's question ----------------------------------------------------------------
    async def ready(self, account_id: str, spec: EndpointSpec) -> tuple[bool, str]:
        """(True, "") when the endpoint (of `account_id`) needs no model or its snapshot is on disk; else
        (False, a status line: progress, or why it failed). Starts or restarts the background download
        as needed."""
        if not spec.model_name:
            return True, ""
        job = await self.start(account_id, spec.model_name, spec.model_revision)
        if job.snapshot is not None and not job.running:
            if job.snapshot.is_dir():
                await self._evict_once(job)
                return True, ""
            job.snapshot = None  # removed or evicted behind our back: fetch it again
            job = await self.start(account_id, spec.model_name, spec.model_revision)
        return False, self.describe(job)

    def owns_status(self, message: str | None) -> bool:
        """True for endpoint status lines this class wrote (cleared by the lifecycle once ready)."""
        return bool(message) and str(message).startswith(STATUS_PREFIX)

    def describe(self, job: _Job) -> str:
        name = job.repo_id if job.revision == "main" else f"{job.repo_id}@{job.revision}"
        if job.error is not None and not job.running:
            return f"{STATUS_PREFIX}{name} failed: {job.error}"
        try:
            st = self.cache.status(job.repo_id)
        except (NotFound, InvalidInput):
            return f"{STATUS_PREFIX}{name}: starting"
        if st.total_bytes <= 0:
            return f"{STATUS_PREFIX}{name}: listing files"
        pct = int(100 * min(st.done_bytes, st.total_bytes) / st.total_bytes)
        return f"{STATUS_PREFIX}{name}: {pct}% ({_mb(st.done_bytes)}/{_mb(st.total_bytes)} MB)"

    # ---- starting work ---------------------------------------------------------------------------
    async def start(self, account_id: str, repo_id: str, revision: str | None) -> _Job:
        """The job for this account and model, started (or restarted after a failure) when needed."""
        rev = revision or "main"
        key = (account_id, repo_id, rev)
        job = self._jobs.get(key)
        if job is not None and (job.running or job.snapshot is not None):
            return job
        token = await self._token(account_id)
        fp = _fingerprint(token)
        now = self.clock.now()
        recent_failure = (
            job is not None
            and job.error is not None
            and job.finished_at is not None
            and now - job.finished_at < self.retry_s
        )
        if job is not None and recent_failure and fp == job.token_fp:
            return job  # retry later, or at once with another token
        with self._lock:
            # The first account to ask for a model proves its access by downloading it; any other
            # account (while that download runs, or once it is cached) asks the hub first.
            check = not self._granted_locked(repo_id, account_id) and (
                self._active[repo_id] > 0 or self._known(repo_id)
            )
            self._active[repo_id] += 1
        job = _Job(account_id, repo_id, rev, fp, cleared=not check)
        job.thread = threading.Thread(
            target=self._run, args=(job, token, check), name=f"model-{repo_id}", daemon=True
        )
        self._jobs[key] = job
        job.thread.start()
        return job

    def _run(self, job: _Job, token: str | None, check: bool) -> None:
        try:
            if check:
                self._check_access(job.repo_id, job.revision, token)
                job.cleared = True
            job.snapshot = self.cache.ensure(job.repo_id, job.revision, token)
            self._grant(job.repo_id, job.account_id)
            job.error = None
        except EmberError as exc:
            job.error = exc.message.replace(token, "***") if token else exc.message
            if "gated" in job.error and not token:
                job.error += f"; {TOKEN_HINT}"
            log.warning(
                "model.prepare.failed repo=%s account=%s error=%s", job.repo_id, job.account_id, job.error
            )
        except Exception as exc:  # noqa: BLE001 - a thread must report, never die silently
            job.error = f"unexpected {type(exc).__name__} while preparing the model"
            log.error("model.prepare.crashed repo=%s error=%r", job.repo_id, type(exc).__name__)
        finally:
            job.finished_at = self.clock.now()
            with self._lock:
                self._active[job.repo_id] -= 1

    def _known(self, repo_id: str) -> bool:
        """A record exists: the model is cached, being fetched, or was tried on this host."""
        try:
            self.cache.status(repo_id)
        except NotFound:
            return False
        return True

    async def _token(self, account_id: str) -> str | None:
        if self.secrets is not None:
            return await self.secrets.value(account_id, TOKEN_SECRET) or None
        return (await self.store.run(self.store.secrets.get, account_id)).get(TOKEN_SECRET) or None

    def _check_access(self, repo_id: str, revision: str, token: str | None) -> None:
        """May this account (its token, or none) download the model? The hub serves a gated model's info
        and file list to anyone and gates only the files, so the proof is the metadata request (a HEAD)
        of one of its files, as a download would make it."""
        from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

        endpoint = self.cache.endpoint_url
        try:
            info = HfApi(endpoint=endpoint, token=token or False).model_info(repo_id, revision=revision)
            names = [s.rfilename for s in info.siblings or []]
            if names:
                probe = "config.json" if "config.json" in names else names[0]
                url = hf_hub_url(repo_id, probe, revision=info.sha or revision, endpoint=endpoint)
                get_hf_file_metadata(url, token=token or False, endpoint=endpoint)
        except GatedRepoError:
            why = "this account's token has no access to it" if token else "a token with access is needed"
            raise ModelError(f"model {repo_id} is gated: {why}") from None
        except RepositoryNotFoundError:
            raise ModelError(
                f"model {repo_id} was not found on the hub (or it needs a token with access)"
            ) from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise ModelError(f"the hub answered HTTP {status} checking access to model {repo_id}") from None
        except Exception as exc:  # noqa: BLE001 - network errors and the like
            raise ModelError(f"could not check access to model {repo_id}: {type(exc).__name__}") from None

    # ---- access grants (which accounts may use a cached model) -----------------------------------
    def _grants(self) -> dict[str, list[str]]:
        if self.access_path is None:
            return {}
        try:
            data = json.loads(self.access_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _granted_locked(self, repo_id: str, account_id: str) -> bool:
        return self.access_path is None or account_id in self._grants().get(repo_id, [])

    def _granted(self, repo_id: str, account_id: str) -> bool:
        with self._lock:
            return self._granted_locked(repo_id, account_id)

    def _grant(self, repo_id: str, account_id: str) -> None:
        if self.access_path is None:
            return
        with self._lock:
            data = self._grants()
            accounts = data.setdefault(repo_id, [])
            if account_id in accounts:
                return
            accounts.append(account_id)
            self.access_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.access_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, sort_keys=True))
            os.replace(tmp, self.access_path)

    def job_for(self, account_id: str, repo_id: str) -> _Job | None:
        """This account's latest job for the model (any revision), if one ran in this process."""
        found = [j for (a, r, _), j in self._jobs.items() if a == account_id and r == repo_id]
        return found[-1] if found else None

    def may_see(self, repo_id: str, account_id: str) -> bool:
        """Whether this account has used (been granted) the model, or is fetching it for one of its
        endpoints (so its owner follows the first download's progress); admins see everything."""
        if self._granted(repo_id, account_id):
            return True
        return any(j.cleared for (a, r, _), j in list(self._jobs.items()) if a == account_id and r == repo_id)

    # ---- eviction --------------------------------------------------------------------------------
    async def in_use(self) -> set[str]:
        """Models named by any live endpoint (never evicted)."""
        rows = await self.store.run(self.store.endpoints.list)
        return {name for r in rows if (name := spec_from_json(r["spec"]).model_name)}

    async def _evict_once(self, job: _Job) -> None:
        if job.evicted or self.cache.budget_bytes is None:
            return
        job.evicted = True
        keep = await self.in_use()
        plan = await anyio.to_thread.run_sync(lambda: self.cache.evict(keep))
        if plan.evict:
            log.info(
                "model.evict evicted=%s after_bytes=%d fits=%s",
                ",".join(plan.evict),
                plan.after_bytes,
                plan.fits,
            )

    # ---- hooks -----------------------------------------------------------------------------------
    async def on_spec(self, account_id: str, spec: EndpointSpec) -> EndpointSpec:
        """API-time hook: reject a malformed model name; start fetching a named model at once."""
        if spec.model_name:
            try:
                check_repo_id(spec.model_name)
            except InvalidInput:
                raise InvalidInput(
                    f"invalid modelName {spec.model_name!r}",
                    [Problem("modelName", "expected a Hugging Face repo id like org/name", spec.model_name)],
                ) from None
            await self.start(account_id, spec.model_name, spec.model_revision)
        return spec

    async def launch_hook(self, backend: str, spec: EndpointSpec) -> tuple[list[Mount], dict[str, str]]:
        """Cache env for every worker of a model endpoint, and the model's own folder of the cache as a
        read-only mount (never the whole cache: other accounts' models and Ember's records stay out): at
        the container path for containers, at its own path for local workers (their sandbox shows it)."""
        if not spec.model_name:
            return [], {}
        snapshot = self._snapshot(spec.model_name, spec.model_revision or "main")
        if backend == "docker":
            cm, env = self.cache.worker_mount(spec.model_name, snapshot)
            return [Mount(cm.host_path, cm.container_path, cm.read_only)], env
        folder = repo_cache_dir(str(self.cache.root), spec.model_name)
        return [Mount(folder, folder, read_only=True)], self.cache.worker_env(spec.model_name, snapshot)

    def _snapshot(self, repo_id: str, rev: str) -> Path:
        for (_, r, v), job in list(self._jobs.items()):
            if r == repo_id and v == rev and job.snapshot is not None and job.snapshot.is_dir():
                return job.snapshot
        st = self.cache.status(repo_id)
        if st.state != READY or not st.snapshot_path:
            raise ModelError(f"model {repo_id} is not ready on this host ({st.state})")
        return Path(st.snapshot_path)
