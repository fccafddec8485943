"""`ember models` (pull with progress, ls, rm), `ember volumes` (create, ls, resize, rm) and `ember
registry` add/ls/rm (the account's registry logins): thin commands over /v1/models,
/v1/networkvolumes and /v1/containerregistryauth."""

from __future__ import annotations

import sys
import time

import typer
from rich.console import Console
from rich.progress import Progress

from ember.cli.answers import VolumeRecord
from ember.cli.http import call, fail, print_json
from ember.cli.output import Col, console, is_terminal, print_table
from ember.cli.progress import transfer_columns

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
models_app = typer.Typer(help="The host's Hugging Face model cache", no_args_is_help=True)
volumes_app = typer.Typer(help="Network volumes, mounted at /runpod-volume in workers", no_args_is_help=True)
POLL_S = 0.5


def _size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000  # type: ignore[assignment]
    return str(n_bytes)


# ---- models ---------------------------------------------------------------------------------------
@models_app.command("pull")
def models_pull(
    name: str = typer.Argument(..., help="Hugging Face model, e.g. org/name"),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit (default main)"),
    timeout_s: float = typer.Option(4 * 3600.0, "--timeout", help="Give up waiting after this many seconds"),
) -> None:
    """Download a model into the host cache (with the account's HF_TOKEN secret), showing progress."""
    body: dict[str, str] = {"name": name}
    if revision:
        body["revision"] = revision
    deadline = time.monotonic() + timeout_s
    live = is_terminal()
    shown = -1  # the last tenth of the download printed as a plain line
    with Progress(*transfer_columns(), console=console, transient=True, disable=not live) as progress:
        task = progress.add_task(name, total=None)
        while True:
            # Pulling is idempotent: each call reports the one download's progress (or its result).
            model = call("POST", "/v1/models/pull", json_body=body)
            progress.update(task, completed=model["doneBytes"], total=model["totalBytes"] or None)
            if not live and model["state"] == "downloading" and model["totalBytes"]:
                tenth = int(model["doneBytes"] * 10 // model["totalBytes"])
                if tenth > shown:
                    shown = tenth
                    typer.echo(
                        f"{name}: {_size(model['doneBytes'])} of {_size(model['totalBytes'])} "
                        f"({model['doneBytes'] * 100 // model['totalBytes']}%)"
                    )
            if model["state"] == "ready":
                break
            if model["state"] == "failed":
                progress.stop()
                fail(f"model {name}: {model['error']}")
            if time.monotonic() >= deadline:
                progress.stop()
                fail(f"model {name} is still downloading after {timeout_s:.0f}s (see `ember models ls`)")
            time.sleep(POLL_S)
    console.print(f"Model {name} is ready ({_size(model['sizeBytes'])}) at {model['path']}")


@models_app.command("ls")
def models_ls(
    as_json: bool = typer.Option(False, "--json", help="Print the models as JSON instead of a table"),
) -> None:
    """List cached models with state, size, progress and the endpoints using them."""
    rows = call("GET", "/v1/models")
    if as_json:
        print_json(rows)
        return
    columns = ("MODEL", "REVISION", Col("STATE", 70), "PROGRESS", "SIZE", "LAST USED", "ENDPOINTS")
    print_table(
        columns,
        (
            (
                m["name"],
                m["revision"],
                m["state"] if not m["error"] else f"{m['state']}: {m['error']}",
                f"{m['progress']}% of {_size(m['totalBytes'])}",
                _size(m["sizeBytes"]),
                m["lastUsedAt"],
                ", ".join(e["name"] for e in m["endpoints"]),
            )
            for m in rows
        ),
    )


@models_app.command("rm")
def models_rm(name: str = typer.Argument(..., help="Model to remove, e.g. org/name")) -> None:
    """Remove a model from the host cache (refused while an endpoint uses it)."""
    call("DELETE", f"/v1/models/{name}")
    console.print(f"Model {name} removed from the cache")


# ---- volumes --------------------------------------------------------------------------------------
def _print_volume(v: VolumeRecord) -> None:
    enforced = "enforced" if v.get("sizeEnforced") else "not enforced"
    console.print(
        f"Volume {v['id']} ({v['name']}): {v['size']} GB ({enforced}), used {_size(v.get('usedBytes'))}"
    )


@volumes_app.command("create")
def volumes_create(
    name: str = typer.Argument(..., help="Volume name"),
    size: int = typer.Option(..., "--size", help="Size in GB"),
    as_json: bool = typer.Option(False, "--json", help="Print the volume record as JSON"),
) -> None:
    """Create a network volume; mount it with `ember deploy --volume ID`."""
    vol = call("POST", "/v1/networkvolumes", json_body={"name": name, "size": size})
    if as_json:
        print_json(vol)
        return
    _print_volume(vol)


@volumes_app.command("ls")
def volumes_ls(
    as_json: bool = typer.Option(False, "--json", help="Print the volumes as JSON instead of a table"),
) -> None:
    """List network volumes with size, usage, enforcement and the endpoints using them."""
    rows = call("GET", "/v1/networkvolumes")
    if as_json:
        print_json(rows)
        return
    print_table(
        ("ID", "NAME", "SIZE", "USED", "LIMIT", "BILLED $", "ENDPOINTS"),
        (
            (
                v["id"],
                v["name"],
                f"{v['size']} GB",
                _size(v.get("usedBytes")),
                "enforced" if v.get("sizeEnforced") else "not enforced",
                v.get("billed"),
                ", ".join(e["name"] for e in v["endpoints"]),
            )
            for v in rows
        ),
    )


@volumes_app.command("resize")
def volumes_resize(
    volume_id: str = typer.Argument(..., help="Volume id"),
    size: int = typer.Option(..., "--size", help="New size in GB (volumes only grow)"),
) -> None:
    """Grow a network volume."""
    _print_volume(call("PATCH", f"/v1/networkvolumes/{volume_id}", json_body={"size": size}))


@volumes_app.command("rm")
def volumes_rm(volume_id: str = typer.Argument(..., help="Volume id")) -> None:
    """Delete a network volume and its data (refused while an endpoint uses it)."""
    call("DELETE", f"/v1/networkvolumes/{volume_id}")
    console.print(f"Volume {volume_id} deleted")


# ---- registry auths -------------------------------------------------------------------------------
def resolve_registry_auth(ref: str) -> str:
    """The id of the account's registry auth with id or name `ref` (fails with a hint when none)."""
    for auth in call("GET", "/v1/containerregistryauth"):
        if ref in (auth["id"], auth["name"]):
            return str(auth["id"])
    fail(
        f"no registry auth {ref!r} (see `ember registry ls`): add one with "
        "`ember registry add NAME --username U`"
    )
    return ""


def registry_add(
    name: str = typer.Argument(..., help="A name for this login, e.g. ghcr-me"),
    username: str = typer.Option(..., "--username", "-u", help="The registry user name"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
) -> None:
    """Store a registry login on the server, for workers' image pulls; prints its id (for
    `ember deploy --registry-auth`). The password is prompted for without echo, or read from stdin."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, err=True)  # stdout is only the id
    if not password:
        fail("the password is empty")
    auth = call(
        "POST",
        "/v1/containerregistryauth",
        json_body={"name": name, "username": username, "password": password},
    )
    typer.echo(auth["id"])
    err_console.print(
        f"Registry auth {auth['name']} added; use it with "
        f"`ember deploy --image REF --registry-auth {auth['name']}`",
        markup=False,
    )


def registry_ls(
    as_json: bool = typer.Option(False, "--json", help="Print the logins as JSON instead of a table"),
) -> None:
    """List the account's registry logins (names and ids; never a username or password)."""
    rows = call("GET", "/v1/containerregistryauth")
    if as_json:
        print_json(rows)
        return
    print_table(("ID", "NAME"), ((auth["id"], auth["name"]) for auth in rows))


def registry_rm(ref: str = typer.Argument(..., help="Registry auth id (or name)")) -> None:
    """Delete a registry login (refused while a template or endpoint uses it)."""
    auth_id = resolve_registry_auth(ref)
    call("DELETE", f"/v1/containerregistryauth/{auth_id}")
    console.print(f"Registry auth {auth_id} deleted")
