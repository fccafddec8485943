"""The composition root: builds every object from Settings and wires them into one ASGI app.

`create_app(settings, *, store=None, backends=None, clock=None, start_loops=True)` is what `ember
server`, `ember up`, `ember dev` and the tests call; nothing else creates engines, clients or loops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import Response

from ember import __version__, compute, console
from ember.api import client as client_routes
from ember.api import endpoints as endpoint_routes
from ember.api import errors as api_errors
from ember.api import fastpath
from ember.api import git as git_routes
from ember.api import hosts as host_routes
from ember.api import manage as manage_routes
from ember.api import metrics as metrics_routes
from ember.api import models as model_routes
from ember.api import registry_auth as registry_auth_routes
from ember.api import releases as release_routes
from ember.api import secrets as secret_routes
from ember.api import sources as source_routes
from ember.api import templates as template_routes
from ember.api import traffic as traffic_routes
from ember.api import volumes as volume_routes
from ember.api import worker as worker_routes
from ember.api.deps import Limits, Runtime
from ember.api.services import Services
from ember.api.serving import IdlePoll
from ember.backends.base import Backend
from ember.control.broadcast import Broadcast
from ember.control.clock import Clock, SystemClock
from ember.control.fleet import Fleet
from ember.control.launcher import LaunchConfig
from ember.control.lifecycle import Lifecycle, LifecycleConfig
from ember.control.meter import Meter
from ember.control.reaper import Reaper, ReaperConfig
from ember.control.runner import Intervals, Runner
from ember.control.signals import Signals
from ember.core.billing import PriceTable
from ember.core.ids import make_id
from ember.core.limits import DEFAULT_TABLE
from ember.core.money import parse_dollars
from ember.fsmodes import make_private
from ember.settings import Settings
from ember.store.facade import Store
from ember.store.leases import Lease

if TYPE_CHECKING:  # imported where they are built, so that importing the app stays light
    from ember.build.registry import CredentialStore, Sealer
    from ember.build.uploads import Uploads
    from ember.control.builder import Builder
    from ember.control.model_preparer import ModelPreparer
    from ember.control.secrets import AccountSecrets
    from ember.models.cache import ModelCache
    from ember.volumes.store import VolumeManager

log = logging.getLogger("ember")


def ensure_admin(store: Store, settings: Settings, clock: Clock) -> str | None:
    """Create the admin account and key on first start. Returns the new plaintext key (to print once),
    or None when the admin already exists. The key is stored hashed; a copy for the local CLI is kept
    in EMBER_HOME/admin_key with mode 0600."""
    if store.accounts.admin() is not None:
        return None
    key = settings.admin_key or ("ek_admin_" + secrets.token_hex(20))
    account_id = make_id("account", uuid.uuid4().hex[:16])
    balance = parse_dollars(settings.admin_initial_balance)
    if not store.accounts.create_admin(account_id, key, balance, clock.now()):
        return None  # another process on this database made it first
    path = settings.home / "admin_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    backends: dict[str, Backend] | None = None,
    clock: Clock | None = None,
    start_loops: bool = True,
) -> FastAPI:
    from ember.build.registry import Sealer

    clock = clock or SystemClock()
    make_private(settings.home)  # 0700, and what an older version left readable made private
    make_private(settings.shared)  # the sealing key is there (the home itself by default)
    store = store or Store.open(settings.db_url, sealer=Sealer(settings.shared))
    if store.db.is_sqlite:
        make_private(settings.home)  # the database file and its -wal/-shm, just made
    if backends is None:
        backends = compute.default_backends(
            settings, clock, releases=lambda: {e["id"]: e["release"] for e in store.endpoints.list()}
        )
    signals = Signals()
    new_admin_key = ensure_admin(store, settings, clock)
    limits = Limits(
        take_hold_s=settings.take_hold_s,
        body_timeout_s=settings.body_timeout_s,
        ping_interval_ms=settings.ping_interval_ms,
        lost_worker_requeues=settings.lost_worker_requeues,
        initial_balance_micros=parse_dollars(settings.initial_balance),
    )
    hosted = _models_and_volumes(settings, store, clock, signals)
    from ember.build.registry import CredentialStore
    from ember.control.registry_auths import RegistryAuths
    from ember.control.volume_mounts import volume_hook

    credentials = CredentialStore(settings.shared)
    registry_auths = RegistryAuths(store, credentials.sealer)
    uploads = _uploads(settings)
    launch = LaunchConfig(
        api_url=settings.api_url,
        shared=settings.shared,
        ping_interval_ms=settings.ping_interval_ms,
        prepare_python=compute.venv_builder(settings.home),
        worker_log=compute.worker_log(backends),
        set_starting_reason=store.workers.set_starting_reason,
        hooks=[volume_hook(hosted.volumes), hosted.preparer.launch_hook],
        registry_auth=credentials.auth_for,
        account_registry_auth=registry_auths.auth_config,
        is_admin=lambda account_id: bool((row := store.accounts.get(account_id)) and row["is_admin"]),
        secret_env=hosted.secrets.worker_env,
    )
    default_backend = settings.backend if settings.backend in backends else next(iter(backends), "local")
    fleet = Fleet(
        backends,
        store,
        signals,
        clock,
        local_host=compute.local_host(settings),
        timeout_s=settings.host_timeout_s,
    )
    lifecycle = Lifecycle(
        store,
        fleet,
        clock,
        signals,
        LifecycleConfig(
            ping_timeout_s=settings.ping_timeout_s,
            dropped_grace_s=max(settings.ping_timeout_s, 3 * settings.ping_interval_ms / 1000),
            init_timeout_s=settings.init_timeout_s,
            stop_grace_s=settings.stop_grace_s,
            lost_worker_requeues=settings.lost_worker_requeues,
            backoff_base_s=settings.backoff_base_s,
            retention_run_s=limits.retention_run_s,
            default_backend=default_backend,
            limit_table=DEFAULT_TABLE,
        ),
        launch,
        preparer=hosted.preparer,
    )
    reaper = Reaper(
        store,
        clock,
        signals,
        ReaperConfig(
            retention_run_s=limits.retention_run_s,
            webhook_retry_s=settings.webhook_retry_s,
            outbound_allow=settings.outbound_networks,
        ),
    )
    meter = Meter(
        store,
        clock,
        PriceTable(active_discount_pct=settings.active_discount_pct),
        volume_price_micros=parse_dollars(settings.volume_price_gb_month, field="volume_price_gb_month"),
    )
    builder = _builder(settings, store, clock, signals, credentials)
    runtime = Runtime(
        store=store,
        clock=clock,
        signals=signals,
        limits=limits,
        api_url=settings.api_url,
        shared=settings.shared,
        fleet=fleet,
        limit_table=DEFAULT_TABLE,
        services=Services(
            models=hosted.models,
            volumes=hosted.volumes,
            preparer=hosted.preparer,
            secrets=hosted.secrets,
            sealer=hosted.sealer,
            registry_auths=registry_auths,
            uploads=uploads,
            builder=builder,
            prices=meter.prices,
        ),
    )
    runner = Runner(
        lifecycle,
        reaper,
        meter,
        clock,
        signals,
        Intervals(tick_s=settings.tick_s, meter_s=settings.meter_interval_s),
        extra=[builder.tick],
        lease=Lease(store.db.engine, "loops"),
    )

    # Several processes may share a PostgreSQL database: tell each other of queued and finished jobs.
    broadcast = None
    if not store.db.is_sqlite and start_loops:
        broadcast = Broadcast(store.db.engine.url.render_as_string(hide_password=False), signals)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_loops:
            runner.start()
        if broadcast is not None:
            broadcast.start()
        try:
            yield
        finally:
            if broadcast is not None:
                await broadcast.stop()
            if start_loops:
                await runner.stop()
            for backend in backends.values():
                await backend.aclose()
            store.close()

    app = fastpath.App(
        title="Ember",
        version=__version__,
        lifespan=lifespan,
        description="Self-hosted serverless GPU platform, wire-compatible with RunPod Serverless.",
        # FastAPI's own OpenTelemetry hooks look the global providers up on every request (about 15 µs
        # each, three requests a job); Ember's figures are its Prometheus metrics (`/metrics`).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = app.runtime = runtime
    app.idle_poll = IdlePoll(settings.idle_poll_us / 1e6) if settings.idle_poll_us else None
    app.state.runner = runner
    app.state.lifecycle = lifecycle
    app.state.new_admin_key = new_admin_key
    api_errors.install(app)
    instruments = metrics_routes.install(app, runtime, token=settings.metrics_token)
    fastpath.install(app, client_routes.fast, worker_routes.fast, observe=instruments.record)
    app.include_router(client_routes.router)
    app.include_router(worker_routes.router)
    app.include_router(template_routes.router)
    app.include_router(endpoint_routes.router)
    app.include_router(release_routes.router)
    app.include_router(manage_routes.router)
    app.include_router(volume_routes.router)
    app.include_router(model_routes.router)
    app.include_router(secret_routes.router)
    app.include_router(registry_auth_routes.router)
    console.install(app)
    app.include_router(git_routes.router)
    app.include_router(source_routes.router)
    app.include_router(traffic_routes.router)
    app.include_router(host_routes.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response('{"status":"ok"}', media_type="application/json")

    return app


def _uploads(settings: Settings) -> Uploads:
    from ember.build.archive import ArchiveLimits
    from ember.build.uploads import Uploads

    limits = ArchiveLimits(
        compressed_bytes=settings.source_upload_max_bytes,
        unpacked_bytes=settings.source_unpacked_max_bytes,
        members=settings.source_max_files,
    )
    return Uploads(settings.shared / "uploads", limits)


@dataclass(frozen=True)
class _Hosted:
    """The host model cache, network volumes and account secrets, and what they share."""

    models: ModelCache
    volumes: VolumeManager
    preparer: ModelPreparer
    secrets: AccountSecrets
    sealer: Sealer


def _models_and_volumes(settings: Settings, store: Store, clock: Clock, signals: Signals) -> _Hosted:
    """The host model cache, network volumes and account secrets."""
    from ember.build.registry import Sealer
    from ember.control.model_preparer import ModelPreparer
    from ember.control.secrets import AccountSecrets
    from ember.models.cache import ModelCache
    from ember.volumes.store import VolumeManager

    budget = int(settings.model_cache_budget_gb * 1024**3) if settings.model_cache_budget_gb > 0 else None
    cache = ModelCache(
        settings.home / "models",
        endpoint_url=settings.hf_endpoint,
        budget_bytes=budget,
        on_download=signals.metrics.model_downloaded,
    )
    volumes = VolumeManager(
        settings.home / "volumes", unit_bytes=settings.volume_unit_bytes, enforce=settings.volume_enforce
    )
    sealer = Sealer(settings.shared)
    secrets = AccountSecrets(store, sealer)
    access = cache.root / "ember" / "access.json"
    preparer = ModelPreparer(cache, store, clock, access_path=access, secrets=secrets)
    return _Hosted(cache, volumes, preparer, secrets, sealer)


def _builder(
    settings: Settings, store: Store, clock: Clock, signals: Signals, credentials: CredentialStore
) -> Builder:
    """The loop that builds git releases and pushes them to `settings.registry`."""
    from ember.control.builder import BuildConfig, Builder

    cfg = BuildConfig(
        home=settings.home,
        registry=settings.registry,
        registry_auth=credentials.auth_for,
        outbound_allow=settings.outbound_networks,
    )
    return Builder(store, clock, signals, cfg)
