"""`ember dev [DIR]`: the real control plane (SQLite in a dev home) serving DIR/handler.py in-process
behind the real /v2 client routes, reloading on file change; `curl` and the `runpod` client work as
against a deployed endpoint. Never changes how `ember server` authenticates."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import logging.config
import os
import secrets
import shutil
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType

import httpx
import typer
import uvicorn
from rich.console import Console
from rich.markup import escape

from ember.api.serving import HttpProtocol
from ember.backends.memory import MemoryBackend
from ember.build.source import find_handler
from ember.cli.answers import EndpointRecord
from ember.cli.dev_worker import InProcessWorkers
from ember.cli.server_cmds import Server, cannot_listen, listen
from ember.control.signals import Signals
from ember.core.errors import InvalidInput
from ember.logs import logging_config
from ember.settings import Settings

console = Console(highlight=False)
# The fixed key of a dev server bound to loopback, so that examples and scripts need no setup. A dev
# server on any other address gets a random key instead (or --key).
LOOPBACK_DEV_KEY = "ek_dev_local"
DEV_SCALING = {"workersMin": 1, "workersMax": 1, "idleTimeout": 5}
POLL_WAKE_TRIES = 40
DEFAULT_PORT = 8000  # the port `ember up` serves on too; EMBER_PORT moves both
NEXT_PORTS = 20  # when the preferred port is taken (say by `make run`), the next ones are tried


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose_key(home: Path, host: str, key: str | None) -> str:
    """The admin key: the one a reused home already has, else --key, else the loopback dev key, else a
    random one."""
    existing = home / "admin_key"
    if existing.is_file():
        return existing.read_text().strip()
    if key:
        return key
    return LOOPBACK_DEV_KEY if is_loopback(host) else "ek_dev_" + secrets.token_hex(16)


def preferred_port() -> int:
    try:
        return int(os.environ.get("EMBER_PORT", "") or DEFAULT_PORT)
    except ValueError:
        return DEFAULT_PORT


def bind(host: str, port: int | None) -> socket.socket:
    """The dev server's listening socket. An explicit `port` must be free (else one line, exit 1); with
    none, the preferred port or, when it is taken, the next free one (said on the console)."""
    if port is not None:
        try:
            return listen(host, port)
        except OSError as exc:
            console.print(cannot_listen(host, port, exc, "Pass another --port."), markup=False)
            raise typer.Exit(1)
    first = preferred_port()
    busy: OSError | None = None
    for candidate in range(first, first + NEXT_PORTS):
        try:
            sock = listen(host, candidate)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                console.print(cannot_listen(host, candidate, exc, "Pass --host or --port."), markup=False)
                raise typer.Exit(1)
            busy = busy or exc
            continue
        if candidate != first:
            console.print(
                f"port {first} is in use (by `make run` / `ember up`?): ember dev serves on port "
                f"{candidate} instead; --port chooses one",
                markup=False,
            )
        return sock
    assert busy is not None
    hint = f"Ports {first}-{first + NEXT_PORTS - 1} are all in use: pass --port."
    console.print(cannot_listen(host, first, busy, hint), markup=False)
    raise typer.Exit(1)


DEV_OUTBOUND_ALLOW = "127.0.0.0/8,::1/128"


def dev_settings(home: Path, host: str, port: int, key: str) -> Settings:
    # Workers run in this process and reach the API over loopback whatever address is served.
    public_url = f"http://127.0.0.1:{port}" if host in ("0.0.0.0", "::") else f"http://{host}:{port}"
    return Settings(
        home=home,
        host=host,
        port=port,
        public_url=public_url,
        database_url=f"sqlite:///{home / 'ember.db'}",
        backend="memory",
        admin_key=key,
        # A one-person dev box: webhooks may reach receivers on this machine unless the setting says else.
        outbound_allow=os.environ.get("EMBER_OUTBOUND_ALLOW", DEV_OUTBOUND_ALLOW),
    )


async def deploy(api: httpx.AsyncClient, name: str, directory: Path, handler: str) -> EndpointRecord:
    """Create the endpoint `name` serving `directory/handler`, or update it (a changed directory makes a
    new release). Returns the endpoint as the API shows it."""
    source = {"sourceDir": str(directory), "handler": handler}
    body = {"name": name, **source, **DEV_SCALING}
    existing = await api.get(f"/v1/endpoints/{name}")
    if existing.status_code == 200:
        resp = await api.patch(f"/v1/endpoints/{name}", json=source)
    else:
        resp = await api.post("/v1/endpoints", json=body)
    if resp.status_code >= 400:
        raise typer.BadParameter(f"cannot deploy {directory}: {resp.text}")
    endpoint: EndpointRecord = resp.json()
    return endpoint


async def watch_and_reload(
    api: httpx.AsyncClient, name: str, directory: Path, handler: str, release: int, stop: asyncio.Event
) -> None:
    """On each change under `directory`, redeploy it; the lifecycle rolls the worker to the new release
    (the old one finishes its held jobs first)."""
    import watchfiles

    async for changes in watchfiles.awatch(
        directory, stop_event=stop, watch_filter=watchfiles.DefaultFilter()
    ):
        files = sorted({Path(path).name for _, path in changes if Path(path).exists()}) or ["(removed)"]
        try:
            ep = await deploy(api, name, directory, handler)
        except (typer.BadParameter, httpx.HTTPError) as exc:
            console.print(f"[red]reload failed[/] ({', '.join(files)}): {escape(str(exc))}")
            continue
        if ep["release"] != release:
            release = ep["release"]
            console.print(f"[cyan]reloaded[/] {', '.join(files)} -> release {release}")


def _example_input(*folders: Path) -> str:
    """The project's own test_input.json: beside the handler (where RunPod's SDK reads it), else the
    first of `folders` that has one."""
    for folder in folders:
        test_input = folder / "test_input.json"
        if test_input.is_file():
            try:
                return json.dumps(json.loads(test_input.read_text()), separators=(",", ":"))
            except ValueError:
                pass
    return '{"input":{}}'


def banner(
    url: str, key: str, name: str, endpoint: EndpointRecord, directory: Path, handler: Path, home: Path
) -> str:
    body = _example_input(handler.parent, directory).replace("'", "'\\''")
    return (
        f"\n[bold green]ember dev[/] serving {escape(str(handler))} in-process, "
        f"reloading on change\n"
        f"  listening on [bold]{url}[/]\n"
        f"  endpoint [bold]{name}[/] ({endpoint['id']}), release {endpoint['release']}; "
        f"home {escape(str(home))}\n"
        f"  API key: [bold]{key}[/]\n\n"
        f"  curl -s -X POST {url}/v2/{name}/runsync \\\n"
        f'    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\\n'
        f"    -d '{escape(body)}'\n\n"
        f'  runpod: runpod.api_key = "{key}"; runpod.endpoint_url_base = "{url}/v2"; '
        f'runpod.Endpoint("{name}")\n'
    )


class _DevServer(Server):
    """Stops the loops, then the in-process workers on shutdown, and wakes the take polls they held, so
    that shutting down waits for no long poll."""

    def __init__(
        self,
        config: uvicorn.Config,
        stop_loops: Callable[[], Awaitable[None]],
        workers: InProcessWorkers,
        signals: Signals,
    ) -> None:
        super().__init__(config, stop_loops)
        self._workers = workers
        self._signals = signals
        self.endpoint_id: str | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._stop_loops()  # no loop may judge or replace the workers stopped next
        self._workers.stop_all()
        # A woken poll sees its client gone and returns; wake-ups are hints, so extra ones are harmless.
        for _ in range(POLL_WAKE_TRIES):
            if self.endpoint_id is None or not self._signals.dispatch.takers(self.endpoint_id):
                break
            await asyncio.sleep(0.05)
            self._signals.dispatch.wake_takers(self.endpoint_id)
        await super().shutdown(sockets)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(
    directory: Path, handler: str, *, host: str, sock: socket.socket, name: str, home: Path, key: str
) -> None:
    from ember.app import create_app
    from ember.fsmodes import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)  # as `ember server`: its home, database and keys are this user's alone
    port = int(sock.getsockname()[1])

    try:  # as `ember server`: EMBER_LOG_FORMAT=json gives one JSON object per line, with ids
        log_config = logging_config(
            os.environ.get("EMBER_LOG_FORMAT", "text"), os.environ.get("EMBER_LOG_LEVEL", "WARNING")
        )
    except ValueError as exc:
        raise SystemExit(f"error: EMBER_LOG_FORMAT: {exc}") from None
    logging.config.dictConfig(log_config)
    from ember.serverless import log as sdk_log

    sdk_log.configure(os.environ)
    settings = dev_settings(home, host, port, key)
    workers = InProcessWorkers(label=directory / handler)
    backend = MemoryBackend(runner=workers)
    app = create_app(settings, backends={"memory": backend})
    # Workers run in this interpreter, so a per-endpoint virtualenv would go unused: the handler's
    # requirements must be installed where `ember dev` runs.
    app.state.lifecycle.launch_cfg.prepare_python = None
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,
        access_log=False,
        loop="uvloop",
        http=HttpProtocol,  # httptools, a response in one write (`ember.api.serving`)
        timeout_keep_alive=75,
        timeout_graceful_shutdown=3,
    )
    server = _DevServer(config, app.state.runner.stop, workers, app.state.runtime.signals)

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if not server.started:
            await serving
            return
        stop = asyncio.Event()
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=settings.api_url, headers=headers, timeout=120) as api:
            try:
                ep = await deploy(api, name, directory, handler)
            except typer.BadParameter as exc:
                console.print(f"[red]error:[/] {escape(str(exc))}")
                server.should_exit = True
                await serving
                raise typer.Exit(2)
            server.endpoint_id = ep["id"]
            console.print(
                banner(f"http://{host}:{port}", key, name, ep, directory, directory / handler, home),
                soft_wrap=True,
            )
            watcher = asyncio.create_task(
                watch_and_reload(api, name, directory, handler, ep["release"], stop)
            )
            try:
                await serving
            finally:
                stop.set()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher

    # uvicorn re-raises the signal that stopped it; SIGTERM then ends `ember dev` as Ctrl-C does,
    # through the clean-up below rather than by the default action.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        console.print("ember dev stopped")


def dev(
    directory: Path = typer.Argument(
        Path("."),
        help="Directory with the handler (handler.py, rp_handler.py, src/handler.py or src/rp_handler.py; "
        "default: here)",
    ),
    handler: str | None = typer.Option(
        None, "--handler", help="The handler file, relative to DIR, when it has another name"
    ),
    port: int | None = typer.Option(
        None, "--port", help="Port to serve the API on [default: 8000 (EMBER_PORT), or the next free one]"
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind"),
    name: str = typer.Option("dev", "--name", help="Endpoint name: /v2/<name>/… routes"),
    home: Path | None = typer.Option(None, "--home", help="Keep the dev store here (default: a temp dir)"),
    key: str | None = typer.Option(None, "--key", help="API key (default: ek_dev_local on loopback)"),
) -> None:
    """Serve DIR's handler in-process behind the real /v2 API, reloading on change."""
    directory = directory.expanduser().resolve()
    try:
        found = find_handler(directory, handler)
    except InvalidInput as exc:
        console.print(f"[red]error:[/] {escape(exc.message)}")
        raise typer.Exit(2)
    sock = bind(host, port)  # before anything is created, so that a busy port leaves nothing behind
    temporary = home is None
    dev_home = Path(tempfile.mkdtemp(prefix="ember-dev-")) if home is None else home.expanduser().resolve()
    if dev_home == directory or directory in dev_home.parents:
        console.print("[red]error:[/] --home must be outside DIR (its changes would trigger reloads)")
        raise typer.Exit(2)
    dev_home.mkdir(parents=True, exist_ok=True)
    # As `python handler.py` run from the handler's folder: relative paths in it resolve there.
    os.chdir((directory / found).parent)
    try:
        serve(
            directory,
            found,
            host=host,
            sock=sock,
            name=name,
            home=dev_home,
            key=choose_key(dev_home, host, key),
        )
    finally:
        if temporary:
            shutil.rmtree(dev_home, ignore_errors=True)
