"""`ember server` and `ember up`: the whole control plane in one process (API, loops, backend, workers);
`up` adds the example endpoint and a friendly banner."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import logging.config
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import typer
import uvicorn
import uvloop
from pydantic import ValidationError
from rich.console import Console

from ember.api.serving import HttpProtocol
from ember.logs import logging_config
from ember.settings import Settings

log = logging.getLogger("ember.server")
console = Console(soft_wrap=True)  # the curl line must stay copy-pastable
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello"


def _settings(
    host: str | None, port: int | None, gpus: str | None, backend: str | None, registry: str | None
) -> Settings:
    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    if gpus is not None:
        overrides["gpus"] = gpus
    if backend:
        overrides["backend"] = backend
    if registry:
        overrides["registry"] = registry
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        # One line per bad setting, naming its EMBER_ variable, instead of pydantic's traceback.
        for error in exc.errors():
            name = "EMBER_" + "_".join(str(part) for part in error["loc"]).upper()
            console.print(f"[red]error:[/] {name}: {error['msg']}", markup=True, highlight=False)
        raise typer.Exit(2)


# How long requests still open at shutdown may run on (a job-done finishing) before they are cut; the
# job-takes the workers hold open end here, and the workers' SDKs retry against the next start.
SHUTDOWN_GRACE_S = 3.0


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port for uvicorn to serve on (it starts listening). Binding before the app
    is built lets a busy port be reported in one line, or another port be chosen. Raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def cannot_listen(host: str, port: int, exc: OSError, hint: str) -> str:
    why = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return f"error: cannot listen on {host}:{port}: {why}. {hint}"


class Server(uvicorn.Server):
    """Stops the control loops before the API closes (SIGTERM, Ctrl-C). The other way round, the lifecycle
    would go on judging workers whose pings the closed API refuses, and stop them as lost, where the next
    start should re-adopt them. Requests still open after `grace_s` (the held job-takes) are then cut."""

    def __init__(
        self,
        config: uvicorn.Config,
        stop_loops: Callable[[], Awaitable[None]],
        grace_s: float = SHUTDOWN_GRACE_S,
    ) -> None:
        super().__init__(config)
        self._stop_loops = stop_loops
        self._grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._stop_loops()
        cut = asyncio.get_running_loop().call_later(self._grace_s, self._cut_requests)
        try:
            await super().shutdown(sockets)
        finally:
            cut.cancel()

    def _cut_requests(self) -> None:
        # uvicorn logs each cancelled request as an "Exception in ASGI application" with its traceback;
        # these were cut on purpose, so say so once instead.
        tasks = list(self.server_state.tasks)
        if tasks:
            logging.getLogger("uvicorn.error").addFilter(_quiet_cancelled)
            log.info("shutdown: %d request(s) still open after %.0f s are cut", len(tasks), self._grace_s)
        for task in tasks:
            task.cancel()


def _quiet_cancelled(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


def _serve(settings: Settings, *, example: bool) -> None:
    from ember.app import create_app
    from ember.fsmodes import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)  # what the server creates (database, keys, logs) is its user's alone

    try:
        sock = listen(settings.host, settings.port)
    except OSError as exc:
        hint = "Stop what serves there, or pass --port (or set EMBER_PORT)."
        console.print(cannot_listen(settings.host, settings.port, exc, hint), markup=False)
        raise typer.Exit(1)

    level = os.environ.get("EMBER_LOG_LEVEL", "INFO")
    logging.config.dictConfig(logging_config(settings.log_format, level, access_log=settings.access_log))
    app = create_app(settings)
    new_key = app.state.new_admin_key
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # uvicorn's loggers write through ours (`ember.logs`), in its format
        log_level=None,
        access_log=settings.access_log,
        loop="uvloop",
        http=HttpProtocol,  # httptools, a response in one write (`ember.api.serving`)
        timeout_keep_alive=75,
    )
    server = Server(config, app.state.runner.stop)

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            # What start-up built (the app, its routes and models, the imported libraries: some 200,000
            # objects) lives as long as the process: the cyclic collector stops walking it. A full
            # collection of it took ~150 ms, a pause of the job path a few times a minute under load.
            gc.freeze()
            if new_key:
                console.print(
                    f"[bold]Admin API key[/] (shown once; a copy for the CLI is in "
                    f"{settings.home / 'admin_key'}):\n  {new_key}"
                )
            if example:
                await asyncio.to_thread(_example_banner, settings)
            else:
                console.print(f"Ember is serving on {settings.api_url}")
        await serving

    # uvicorn's `loop=` applies only when uvicorn runs the loop itself; here we do, so ask for uvloop.
    try:
        uvloop.run(main())
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
        console.print("Ember stopped")


def _example_banner(settings: Settings) -> None:
    key = (settings.home / "admin_key").read_text().strip()
    url = settings.api_url
    headers = {"Authorization": f"Bearer {key}"}
    body = {"name": "hello", "sourceDir": str(EXAMPLE), "workersMin": 0, "workersMax": 2, "idleTimeout": 60}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        existing = client.get("/v1/endpoints/hello")
        if existing.status_code == 200:
            resp = client.patch("/v1/endpoints/hello", json=body)
        else:
            resp = client.post("/v1/endpoints", json=body)
        resp.raise_for_status()
        ep = resp.json()
    key_ref = f"$(cat {settings.home / 'admin_key'})"
    console.print(
        f"\n[bold green]Ember is up[/] on {url}  (store: {settings.db_url}, backend: {settings.backend})\n"
        f"Example endpoint [bold]hello[/] = {ep['id']}. Try it:\n\n"
        f"  curl -s -X POST {url}/v2/{ep['id']}/runsync \\\n"
        f"    -H \"Authorization: Bearer {key_ref}\" -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"input": {{"name": "Ada"}}}}\'\n\n'
        f"API docs: {url}/docs   CLI: ember endpoints | ember workers hello | ember logs hello -f\n"
    )


HOST = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)")
PORT = typer.Option(None, "--port", help="Port (default 8000)")
GPUS = typer.Option(None, "--gpus", help="Virtual GPU capacity, e.g. TEST_GPU:4 (or EMBER_GPUS)")
BACKEND = typer.Option(None, "--backend", help="local | docker (or EMBER_BACKEND)")
REGISTRY = typer.Option(None, "--registry", help="Registry HOST:PORT for git builds (or EMBER_REGISTRY)")


def server(
    host: str | None = HOST,
    port: int | None = PORT,
    gpus: str | None = GPUS,
    backend: str | None = BACKEND,
    registry: str | None = REGISTRY,
) -> None:
    """Run the control plane: API, loops, backend and workers."""
    _serve(_settings(host, port, gpus, backend, registry), example=False)


def up(
    host: str | None = HOST,
    port: int | None = PORT,
    gpus: str | None = GPUS,
    backend: str | None = BACKEND,
    registry: str | None = REGISTRY,
    no_example: bool = typer.Option(False, "--no-example", help="Do not deploy the example endpoint"),
) -> None:
    """Run the control plane with embedded defaults and the example endpoint."""
    _serve(_settings(host, port, gpus, backend, registry), example=not no_example)


def migrate() -> None:
    """Bring the database (EMBER_DATABASE_URL, else SQLite in EMBER_HOME) to this version's schema and
    exit: a separate step for operators who want one before starting servers (which migrate too, safely
    from several processes at once)."""
    from sqlalchemy import text

    from ember.build.registry import Sealer
    from ember.core.errors import StoreError
    from ember.fsmodes import make_private
    from ember.store.facade import Store

    settings = _settings(None, None, None, None, None)
    make_private(settings.home)
    make_private(settings.shared)
    try:
        store = Store.open(settings.db_url, sealer=Sealer(settings.shared))
    except StoreError as exc:
        console.print(f"[red]error:[/] {exc.message}", markup=True, highlight=False)
        raise typer.Exit(1)
    try:
        with store.db.engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        store.close()
    console.print(f"Database migrated: schema revision {revision}", highlight=False)
