"""The composition root: builds every object from Settings and wires them into one ASGI app.

`create_app(settings, *, store=None, backends=None, clock=None, start_loops=True)` is what `ember
server`, `ember up`, `ember dev` and the tests call; nothing else creates engines, clients or loops.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from ember import __version__, console
from ember.api import client as client_routes
from ember.api import endpoints as endpoint_routes
from ember.api import errors as api_errors
from ember.api import fastpath
from ember.api import git as git_routes
from ember.api import manage as manage_routes
from ember.api import metrics as metrics_routes
from ember.api import registry_auth as registry_auth_routes
from ember.api import resources as resource_routes
from ember.api import sources as source_routes
from ember.api import traffic as traffic_routes
from ember.api import worker as worker_routes
from ember.api.deps import Limits, Runtime
from ember.backends.base import Backend
from ember.control.broadcast import Broadcast
from ember.control.clock import Clock, SystemClock
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
from ember.core.placement import Host
from ember.fsmodes import make_private
from ember.settings import Settings
from ember.store.facade import Store
from ember.store.leases import Lease

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


def default_backends(
    settings: Settings, clock: Clock, releases: Callable[[], Mapping[str, int]] | None = None
) -> dict[str, Backend]:
    """Local processes always; Docker when asked for (backend=docker, EMBER_DOCKER=1) or when an engine
    answers. An unreachable engine never fails startup: launches on it fail with a clear error instead.
    `releases` (each live endpoint's current release) lets the local backend retire stale templates."""
    from ember.backends.local import LocalBackend
    from ember.backends.sandbox import SandboxConfig
    from ember.core.sandbox import parse_mode, startup_warning

    home = settings.home.absolute()
    sandbox = SandboxConfig(parse_mode(settings.sandbox), settings.sandbox_uid_base, hidden=(str(home),))
    warning = startup_warning(sandbox.mode, available=sandbox.bwrap is not None)
    if warning:
        log.warning(warning)
    local = LocalBackend(
        home / "runtime",
        python=sys.executable,
        sandbox=sandbox,
        templates_max=settings.templates_max,
        releases=releases,
    )
    backends: dict[str, Backend] = {"local": local}
    wanted = settings.backend == "docker" or os.environ.get("EMBER_DOCKER", "") == "1"
    if wanted or (os.environ.get("EMBER_DOCKER", "") != "0" and _docker_reachable()):
        from ember.backends.docker import DockerBackend
        from ember.backends.docker_warm import WarmConfig

        # A container's output is kept here when it is removed, so `ember logs` still shows it.
        kept = settings.home / "runtime" / "container-logs"
        # Warm containers' control directories (their launcher and fifos), one per container.
        control = home / "runtime" / "containers"
        warm = WarmConfig(settings.warm_container_s, settings.warm_containers_max, control)
        backends["docker"] = DockerBackend(
            instance=instance_id(settings.home), logs_dir=kept, warm=warm, clock=clock.now
        )
    return backends


def _docker_reachable(timeout_s: float = 2.0) -> bool:
    try:
        import docker

        client = docker.from_env(timeout=int(max(1, timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no answer: all mean "not reachable"
        return False


def instance_id(home: Path) -> str:
    """This installation's id (kept in EMBER_HOME/instance_id): labels its containers, so a restart
    adopts them and another Ember on the same engine leaves them alone."""
    path = home / "instance_id"
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = "ei_" + uuid.uuid4().hex[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    return value


def hosts_from(settings: Settings) -> list[Host]:
    from ember.backends.gpus import detect_gpus, parse_gpu_decl

    slots: dict[str, list[str]] = dict(detect_gpus())
    if settings.gpus:
        for gpu_type, devices in parse_gpu_decl(settings.gpus).items():
            slots[gpu_type] = list(devices)
    return [Host("local", slots)]


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
    store = store or Store.open(settings.db_url, sealer=Sealer(settings.home))
    if store.db.is_sqlite:
        make_private(settings.home)  # the database file and its -wal/-shm, just made
    if backends is None:
        backends = default_backends(
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
    runtime = Runtime(
        store=store,
        clock=clock,
        signals=signals,
        limits=limits,
        api_url=settings.api_url,
        home=settings.home,
        backends=dict(backends),
        limit_table=DEFAULT_TABLE,
    )
    preparer, volume_hook = _models_and_volumes(settings, store, clock, runtime)
    from ember.build.registry import CredentialStore
    from ember.control.registry_auths import RegistryAuths

    credentials = CredentialStore(settings.home)
    registry_auths = RegistryAuths(store, runtime.extras["resources"], credentials.sealer)
    runtime.extras.update(registry_auths=registry_auths)
    runtime.extras.update(uploads=_uploads(settings))
    launch = LaunchConfig(
        api_url=settings.api_url,
        home=settings.home,
        ping_interval_ms=settings.ping_interval_ms,
        prepare_python=_venv_builder(settings.home),
        worker_log=_worker_log(backends),
        set_starting_reason=store.workers.set_starting_reason,
        hooks=[volume_hook, preparer.launch_hook],
        registry_auth=credentials.auth_for,
        account_registry_auth=registry_auths.auth_config,
        is_admin=lambda account_id: bool((row := store.accounts.get(account_id)) and row["is_admin"]),
        secret_env=runtime.extras["secrets"].worker_env,
    )
    default_backend = settings.backend if settings.backend in backends else next(iter(backends), "local")
    lifecycle = Lifecycle(
        store,
        backends,
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
            hosts=hosts_from(settings),
            limit_table=DEFAULT_TABLE,
        ),
        launch,
        preparer=preparer,
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
    runtime.extras.update(builder=builder, prices=meter.prices)
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
    app.state.runtime = runtime
    app.state.runner = runner
    app.state.lifecycle = lifecycle
    app.state.new_admin_key = new_admin_key
    api_errors.install(app)
    instruments = metrics_routes.install(app, runtime, token=settings.metrics_token)
    fastpath.install(app, client_routes.fast, worker_routes.fast, observe=instruments.record)
    app.include_router(client_routes.router)
    app.include_router(worker_routes.router)
    app.include_router(endpoint_routes.router)
    app.include_router(manage_routes.router)
    app.include_router(resource_routes.router)
    app.include_router(registry_auth_routes.router)
    console.install(app)
    app.include_router(git_routes.router)
    app.include_router(source_routes.router)
    app.include_router(traffic_routes.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response('{"status":"ok"}', media_type="application/json")

    return app


def _uploads(settings: Settings) -> Any:
    from ember.build.archive import ArchiveLimits
    from ember.build.uploads import Uploads

    limits = ArchiveLimits(
        compressed_bytes=settings.source_upload_max_bytes,
        unpacked_bytes=settings.source_unpacked_max_bytes,
        members=settings.source_max_files,
    )
    return Uploads(settings.home / "uploads", limits)


def _models_and_volumes(settings: Settings, store: Store, clock: Clock, runtime: Runtime) -> tuple[Any, Any]:
    """The host model cache, network volumes and account secrets, registered in `runtime.extras`."""
    from ember.build.registry import Sealer
    from ember.control.models import ModelPreparer, volume_hook
    from ember.control.secrets import AccountSecrets
    from ember.models.cache import ModelCache
    from ember.store.resources import ResourceStore
    from ember.volumes.store import VolumeManager

    budget = int(settings.model_cache_budget_gb * 1024**3) if settings.model_cache_budget_gb > 0 else None
    cache = ModelCache(
        settings.home / "models",
        endpoint_url=settings.hf_endpoint,
        budget_bytes=budget,
        on_download=runtime.signals.metrics.model_downloaded,
    )
    volumes = VolumeManager(
        settings.home / "volumes", unit_bytes=settings.volume_unit_bytes, enforce=settings.volume_enforce
    )
    resources = ResourceStore(store.db.engine)
    sealer = Sealer(settings.home)
    secrets = AccountSecrets(store, resources, sealer)
    access = cache.root / "ember" / "access.json"
    preparer = ModelPreparer(cache, store, resources, clock, access_path=access, secrets=secrets)
    runtime.extras.update(
        models=cache, volumes=volumes, resources=resources, preparer=preparer, on_spec=preparer.on_spec
    )
    runtime.extras.update(secrets=secrets, sealer=sealer)
    return preparer, volume_hook(volumes)


def _builder(settings: Settings, store: Store, clock: Clock, signals: Signals, credentials: Any) -> Any:
    """The loop that builds git releases and pushes them to `settings.registry`."""
    from ember.control.builder import BuildConfig, Builder

    cfg = BuildConfig(
        home=settings.home,
        registry=settings.registry,
        registry_auth=credentials.auth_for,
        outbound_allow=settings.outbound_networks,
    )
    return Builder(store, clock, signals, cfg)


def _venv_builder(home: Path) -> Any:
    from ember.build.venv import ensure_venv

    async def prepare(
        source: Path,
        *,
        on_build: Callable[[], None] | None = None,
        on_output: Callable[[str], None] | None = None,
    ) -> str | None:
        import anyio.to_thread

        build = functools.partial(ensure_venv, on_build=on_build, on_output=on_output)
        return await anyio.to_thread.run_sync(build, source, home / "venvs")

    return prepare


def _worker_log(backends: Mapping[str, Backend]) -> Callable[[str], Path] | None:
    """Where a local worker's output goes: its venv build's output is written there too."""
    local = backends.get("local")
    log_path = getattr(local, "log_path", None)
    return log_path if callable(log_path) else None
