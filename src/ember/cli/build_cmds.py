"""The worker author's CLI commands: `init`, `build`, `push`, `registry login` (Typer functions).

The main CLI registers these; each reads its settings here, shows progress with rich, and turns an
EmberError into one line on stderr and exit code 1.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

from ember.build.image import DEFAULT_SIZE_BUDGET_BYTES, build_image, push_image
from ember.build.registry import CredentialStore, verify_login
from ember.build.scaffold import DEFAULT_BASE_IMAGE, init_project
from ember.cli.progress import BuildView, PushView
from ember.core.errors import EmberError
from ember.settings import Settings

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def _errors_as_exit() -> Iterator[None]:
    try:
        yield
    except EmberError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", markup=True)
        raise typer.Exit(1)


def _credentials() -> CredentialStore:
    return CredentialStore(Settings().shared)


def init(
    directory: Path = typer.Argument(Path("."), help="Project directory (created if missing)."),
    base_image: str = typer.Option(DEFAULT_BASE_IMAGE, "--base-image", help="Image to build FROM."),
    model: str | None = typer.Option(
        None, "--model", help="Hugging Face model (org/name) to bake into the image at build time."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing project files."),
) -> None:
    """Create a worker project: handler.py, requirements.txt, test_input.json, Dockerfile, .dockerignore."""
    with _errors_as_exit():
        written = init_project(directory, base_image=base_image, model=model, force=force)
    for path in written:
        if "vendor" not in path.parts:
            console.print(f"  wrote {path}")
    console.print(f"  wrote {directory / 'vendor'} (Ember's worker SDK, standard library only)")
    console.print(
        f"\nNext: [bold]cd {directory} && python handler.py[/] to run test_input.json locally, then "
        "[bold]ember build -t REGISTRY/NAME:TAG[/]."
    )


def build(
    directory: Path = typer.Argument(Path("."), help="Build context (the project directory)."),
    tag: str | None = typer.Option(
        None,
        "--tag",
        "-t",
        help="Image reference to tag the build with (default: [$EMBER_REGISTRY/]<directory name>:latest).",
    ),
    dockerfile: str = typer.Option("Dockerfile", "--file", "-f", help="Dockerfile inside the directory."),
    size_budget_gb: float = typer.Option(
        DEFAULT_SIZE_BUDGET_BYTES / 1e9, "--size-budget-gb", help="Warn when the image is bigger."
    ),
) -> None:
    """Build the image, showing its steps and layers (every build line when the output is not a
    terminal), then report its size and what makes it big."""
    tag = tag or default_tag(directory)
    secrets = {"hf_token": os.environ["HF_TOKEN"]} if os.environ.get("HF_TOKEN") else {}
    # A hub mirror named by HF_ENDPOINT reaches a baked-model step; host networking lets the build reach
    # one on this machine (as worker containers do).
    hub = os.environ.get("HF_ENDPOINT", "").strip()
    build_args = {"HF_ENDPOINT": hub} if hub else {}
    console.print(f"[bold]building[/] {tag} from {directory}")
    with _errors_as_exit(), BuildView(console, f"building {tag}") as view:
        report = build_image(
            directory,
            tag,
            dockerfile=dockerfile,
            on_log=view.line,
            secrets=secrets,
            size_budget_bytes=int(size_budget_gb * 1e9),
            build_args=build_args,
            network="host" if hub else None,
        )
    for line in report.lines():
        style = "yellow" if line.startswith(("warning:", "advice:")) else None
        console.print(line, style=style, markup=False)
    console.print(f"[green]built[/] {tag}; push it with [bold]ember push {tag}[/]")


def default_tag(directory: Path) -> str:
    """`<directory name>:latest`, under EMBER_REGISTRY when it is set (so `ember push` needs no more)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", directory.resolve().name.lower()).strip(".-_") or "worker"
    registry = os.environ.get("EMBER_REGISTRY", "").strip().rstrip("/")
    return f"{registry}/{name}:latest" if registry else f"{name}:latest"


def push(
    ref: str = typer.Argument(..., help="Local image reference, e.g. registry.example.com/me/worker:v1"),
) -> None:
    """Push an image to its registry with the credentials saved by `ember registry login`, showing
    each layer's progress."""
    console.print(f"[bold]pushing[/] {ref}")
    auth = _credentials().auth_for(ref)
    with _errors_as_exit(), PushView(console) as view:
        digest = push_image(ref, auth=auth, on_log=view.line, on_progress=view.progress)
    console.print(f"[green]pushed[/] {ref}@{digest}")


def registry_login(
    host: str = typer.Argument(..., help="Registry host, e.g. ghcr.io or 127.0.0.1:5000"),
    username: str = typer.Option(..., "--username", "-u", help="The registry user name."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Check the login with the registry first."
    ),
) -> None:
    """Save a registry login (file mode 0600 under the Ember home) for push and for workers' image pulls."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True)
    with _errors_as_exit():
        if verify:
            verify_login(host, username, password)
        credential = _credentials().save(host, username, password)
    console.print(f"[green]logged in[/] to {credential.host} as {credential.username}")
