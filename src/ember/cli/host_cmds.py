"""`ember hosts` (ls, add, rm): the GPU machines, over /v1/hosts (admin), and `ember agent`, which
joins this machine to a control plane as a host."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import signal
from pathlib import Path

import typer
from rich.console import Console

from ember.cli.http import call, print_json
from ember.cli.output import console, print_table
from ember.logs import logging_config

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
hosts_app = typer.Typer(help="GPU machines whose agents run workers (admin); alone: ls")


@hosts_app.callback(invoke_without_command=True)
def _hosts(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        hosts_ls(as_json=False)


def _counts(values: dict[str, int]) -> str:
    return ", ".join(f"{t}:{n}" for t, n in sorted(values.items())) or "-"


@hosts_app.command("ls")
def hosts_ls(
    as_json: bool = typer.Option(False, "--json", help="Print the hosts as JSON instead of a table"),
) -> None:
    """List the hosts: state, GPUs (in use / in all), workers, last contact."""
    hosts = call("GET", "/v1/hosts")["hosts"]
    if as_json:
        print_json(hosts)
        return
    print_table(
        ("ID", "NAME", "STATE", "GPUS", "GPUS USED", "WORKERS", "BACKENDS", "LAST CONTACT"),
        (
            (
                h["id"],
                h["name"],
                h["state"],
                _counts(h["gpus"]),
                _counts(h["gpusUsed"]),
                h["workers"],
                ",".join(h["backends"]) or "-",
                "never" if h["lastContactS"] is None else f"{h['lastContactS']:.0f}s ago",
            )
            for h in hosts
        ),
    )


@hosts_app.command("add")
def hosts_add(name: str = typer.Argument(..., help="A name for the machine, e.g. gpu-box-1")) -> None:
    """Add a host; prints the token its agent joins with (shown this once) and the command to run there."""
    host = call("POST", "/v1/hosts", json_body={"name": name})
    typer.echo(host["token"])
    err_console.print(f"Host {host['name']} ({host['id']}) added. On that machine run:\n  {host['join']}")


@hosts_app.command("rm")
def hosts_rm(ref: str = typer.Argument(..., help="Host id or name")) -> None:
    """Remove a host: its agent is refused from now on and its workers are replaced elsewhere."""
    call("DELETE", f"/v1/hosts/{ref}")
    console.print(f"Host {ref} removed")


def agent(
    server: str = typer.Option(..., "--server", envvar="EMBER_SERVER", help="The control plane's address"),
    token: str = typer.Option(
        ..., "--token", envvar="EMBER_HOST_TOKEN", help="The host's token (ember hosts add)"
    ),
    home: Path | None = typer.Option(None, "--home", help="The agent's data directory (default EMBER_HOME)"),
    gpus: str | None = typer.Option(None, "--gpus", help='Virtual GPU slots to offer, e.g. "TEST_GPU:2"'),
) -> None:
    """Join this machine to a control plane as a host: it reports its GPUs and runs the workers placed
    on it (local processes, and Docker when an engine answers), connecting out to --server only."""
    from ember import compute
    from ember.agent.loop import Agent, Refused
    from ember.control.clock import SystemClock
    from ember.fsmodes import make_private
    from ember.settings import Settings

    overrides: dict[str, object] = {}
    if home is not None:
        overrides["home"] = home
    if gpus is not None:
        overrides["gpus"] = gpus
    settings = Settings(**overrides)  # type: ignore[arg-type]
    logging.config.dictConfig(logging_config(settings.log_format))
    make_private(settings.home)  # as the server's home: the agent's runtime and sources are there
    backends = compute.default_backends(settings, SystemClock())
    slots = compute.gpu_slots(settings.gpus)

    async def main() -> None:
        worker = Agent(
            server,
            token,
            settings.home,
            backends,
            slots,
            prepare_python=compute.venv_builder(settings.home),
        )
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            offered = _counts({t: len(d) for t, d in slots.items()})
            await worker.run(
                on_joined=lambda host_id: err_console.print(
                    f"Agent joined {server} as host {host_id} (GPUs: {offered})"
                )
            )
        finally:
            await worker.aclose()
            for backend in backends.values():
                await backend.aclose()

    try:
        asyncio.run(main())
    except Refused as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(1) from None
    except asyncio.CancelledError:
        pass
    err_console.print("Agent stopped (its workers keep running; the next start adopts them)")
