"""CLI commands that manage endpoints and look at them: deploy, endpoints, workers, jobs, logs,
releases, rollback, exec/ssh. Tables print through `output.print_table` (whole values when the output
is not a terminal); every listing takes --json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import typer
from rich.markup import escape

from ember.build.archive import pack
from ember.build.source import find_handler
from ember.cli.answers import EndpointRecord, GitSource, SourceUpload
from ember.cli.deploy_wait import wait_for_worker
from ember.cli.follow import JOB_COLUMNS, follow_builds, follow_jobs, job_row
from ember.cli.http import api_key, api_url, call, err, fail, print_json
from ember.cli.output import Col, console, print_table
from ember.cli.resource_cmds import resolve_registry_auth
from ember.core.errors import InvalidInput


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        if "=" not in pair:
            fail(f"--env expects KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        env[k] = v
    return env


def deploy(
    directory: str | None = typer.Argument(
        None,
        help="Directory with the handler (handler.py, rp_handler.py, src/handler.py or src/rp_handler.py, "
        "or --handler) and an optional requirements.txt",
    ),
    name: str = typer.Option(..., "--name", help="Endpoint name"),
    handler: str | None = typer.Option(
        None,
        "--handler",
        help="The handler file to run, relative to DIRECTORY (default: the first of handler.py, "
        "rp_handler.py, src/handler.py, src/rp_handler.py); it runs from its own directory",
    ),
    image: str | None = typer.Option(None, "--image", help="Deploy a container image instead of a directory"),
    git: str | None = typer.Option(None, "--git", help="Deploy from a git repository URL"),
    branch: str = typer.Option("main", "--branch", help="With --git: the branch to build and follow"),
    dockerfile: str = typer.Option(
        "Dockerfile", "--dockerfile", help="With --git: the Dockerfile, relative to --context"
    ),
    context: str = typer.Option(
        ".", "--context", help="With --git: the build context directory inside the repository"
    ),
    workers_min: int | None = typer.Option(
        None, "--workers-min", help="Workers kept running even with no jobs (active workers; default 0)"
    ),
    workers_max: int | None = typer.Option(
        None, "--workers-max", help="Most workers the endpoint may scale up to (default 3)"
    ),
    idle_timeout: int | None = typer.Option(
        None, "--idle-timeout", help="Whole seconds idle before a flex worker stops (default 5)"
    ),
    gpu: list[str] = typer.Option([], "--gpu", help="GPU type, in preference order (repeatable)"),
    gpu_count: int | None = typer.Option(None, "--gpu-count", help="GPUs per worker, 1-8 (default 1)"),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE (repeatable)"),
    model: str | None = typer.Option(None, "--model", help="Hugging Face model to cache on the host"),
    volume: str | None = typer.Option(None, "--volume", help="Network volume id to mount at /runpod-volume"),
    registry_auth: str | None = typer.Option(
        None,
        "--registry-auth",
        help="Pull --image with this registry login (id or name, see `ember registry ls`; '' for none)",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the endpoint record as JSON"),
    wait: bool = typer.Option(
        False, "--wait", help="Wait for a worker to be ready, showing its start (venv build) and log"
    ),
    wait_timeout: float = typer.Option(900.0, "--wait-timeout", help="Seconds --wait waits at most"),
) -> None:
    """Create or update an endpoint from a directory, an image or a git repository."""
    body: dict[str, object] = {"name": name}
    sources = [s for s in (directory, image, git) if s]
    if len(sources) != 1:
        fail("give exactly one source: a DIRECTORY, --image REF or --git URL")
    if handler is not None and not directory:
        fail("--handler names a file in a DIRECTORY; give one")
    if directory:
        body.update(_directory_source(directory, handler))
    if image:
        body["imageName"] = image
    git_source: GitSource | None = None
    if git:
        git_source = {"url": git, "branch": branch, "dockerfile": dockerfile, "context": context}
        body["git"] = git_source
    for key, value in (
        ("workersMin", workers_min),
        ("workersMax", workers_max),
        ("idleTimeout", idle_timeout),
        ("gpuCount", gpu_count),
        ("modelName", model),
        ("networkVolumeId", volume),
    ):
        if value is not None:
            body[key] = value
    if gpu:
        body["gpuTypeIds"] = gpu
    if registry_auth is not None:
        body["containerRegistryAuthId"] = resolve_registry_auth(registry_auth) if registry_auth else None
    if env:
        body["env"] = _parse_env(env)
    existing = _find(name)
    record: EndpointRecord
    if existing is None:
        record = call("POST", "/v1/endpoints", json_body=body)
    else:
        if git_source is not None and existing.get("git"):
            body["git"] = {**(existing["git"] or {}), **git_source}
        record = call("PATCH", f"/v1/endpoints/{existing['id']}", json_body=body)
    if as_json:
        print_json(record)
        if wait:
            wait_for_worker(record, wait_timeout)
        return
    verb = "created" if existing is None else "updated"
    console.print(
        f"Endpoint [bold]{record['name']}[/] {verb}: id {record['id']}, release {record['release']}"
    )
    shown_dir = record.get("sourceDir") or (directory and Path(directory).expanduser().resolve())
    if shown_dir:
        console.print(f"  runs {shown_dir}/{record.get('handler') or 'handler.py'}", markup=False)
    console.print(f"  {api_url()}/v2/{record['id']}/runsync")
    shown_git = record.get("git")
    if shown_git:
        console.print(
            f"  builds from {shown_git['url']} ({shown_git['branch']}); follow with "
            f"`ember releases {record['name']} -f`\n"
            f"  push webhook: {api_url()}/v1/git/webhook (content type application/json, "
            f"secret {shown_git.get('webhookSecret', 'as shown when it was set')})",
            markup=False,
        )
    if wait:
        wait_for_worker(record, wait_timeout)


def _directory_source(directory: str, handler: str | None) -> dict[str, str]:
    """The body fields of a directory deploy, checked here first so that a mistake reads as one line:
    a directory that does not exist, or one without a handler file."""
    path = Path(directory).expanduser().resolve()
    if not path.exists():
        fail(f"{path} does not exist")
    try:
        find_handler(path, handler)
    except InvalidInput as exc:
        hint = "" if handler else f" (create one with `ember init {directory}`, or name it with --handler)"
        fail(escape(exc.message) + hint)
    return {"sourceId": _upload(path)["id"], **({"handler": handler} if handler is not None else {})}


def _upload(path: Path) -> SourceUpload:
    """Pack `path` (its .gitignore and .emberignore respected) and upload it: the server keeps it for
    this account and an endpoint names it by id. Every deploy uploads, the admin's too, so that a
    directory deploys the same way to a server on this machine or another."""
    data = pack(path)
    upload: SourceUpload = call(
        "POST", "/v1/sources", content=data, content_type="application/gzip", timeout_s=600.0
    )
    err.print(  # standard error: --json keeps standard output for the record
        f"Uploaded {path}: {upload['files']} files, {upload['size'] / 1e6:.1f} MB ({upload['id']})",
        markup=False,
        highlight=False,
    )
    return upload


def _find(name: str) -> EndpointRecord | None:
    found: list[EndpointRecord] = call("GET", "/v1/endpoints")
    for ep in found:
        if ep["name"] == name or ep["id"] == name:
            return ep
    return None


def endpoints(
    as_json: bool = typer.Option(False, "--json", help="Print the endpoints as JSON instead of a table"),
) -> None:
    """List endpoints."""
    rows = call("GET", "/v1/endpoints")
    if as_json:
        print_json(rows)
        return
    print_table(
        ("ID", "NAME", "RELEASE", "MIN", "MAX", "DESIRED", "WHY", "WORKERS"),
        (
            (
                ep["id"],
                ep["name"],
                ep["release"],
                ep["workersMin"],
                ep["workersMax"],
                ep["scaling"]["desiredWorkers"],
                ep["scaling"]["reason"],
                ", ".join(f"{k.lower()} {v}" for k, v in sorted(ep.get("workerCounts", {}).items())),
            )
            for ep in rows
        ),
    )


def delete(endpoint: str = typer.Argument(..., help="Endpoint id or name")) -> None:
    """Delete an endpoint (its workers stop; usage stays readable)."""
    call("DELETE", f"/v1/endpoints/{endpoint}")
    console.print(f"Endpoint {endpoint} deleted")


def workers(
    endpoint: str = typer.Argument(..., help="Endpoint id or name"),
    all_: bool = typer.Option(False, "--all", help="Include stopped workers"),
    as_json: bool = typer.Option(False, "--json", help="Print the workers as JSON instead of a table"),
) -> None:
    """List an endpoint's workers with state, type, release, host, GPU and time in state."""
    rows = call("GET", f"/v1/endpoints/{endpoint}/workers", params={"includeStopped": str(all_).lower()})
    if as_json:
        print_json(rows)
        return
    print_table(
        ("ID", "STATE", "TYPE", "RELEASE", "HOST", "GPU", "IN STATE", Col("REASON", 60)),
        (
            (
                w["id"],
                w["state"],
                w["type"],
                w["release"],
                w.get("hostId"),
                f"{w['gpuTypeId']} [{','.join(w['gpuDevices'])}]" if w["gpuTypeId"] else None,
                f"{w['secondsInState']:.0f}s",
                w["reason"],
            )
            for w in rows
        ),
    )


def jobs(
    endpoint: str | None = typer.Argument(None, help="Endpoint id or name"),
    state: str | None = typer.Option(
        None, "--state", help="Only jobs in this state (IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, …)"
    ),
    limit: int = typer.Option(50, "--limit", help="Most jobs to list, newest first"),
    as_json: bool = typer.Option(
        False, "--json", help="Print the jobs as JSON instead of a table (with -f: one job per line)"
    ),
    follow: bool = typer.Option(
        False, "-f", "--follow", help="Keep printing new jobs and changes of state, until Ctrl-C"
    ),
) -> None:
    """List recent jobs (whole ids, tab-separated, when the output is not a terminal)."""
    params: dict[str, str | int] = {"limit": limit}
    if endpoint:
        params["endpointId"] = endpoint
    if state:
        params["state"] = state
    if follow:
        follow_jobs(params, as_json)
        return
    rows = call("GET", "/v1/jobs", params=params)
    if as_json:
        print_json(rows)
        return
    columns = (*JOB_COLUMNS[:-1], Col(JOB_COLUMNS[-1], 60))
    print_table(columns, (job_row(j) for j in rows))


def logs(
    endpoint: str = typer.Argument(..., help="Endpoint id or name"),
    worker: str | None = typer.Option(None, "--worker", help="Only this worker"),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines"),
    tail: int | None = typer.Option(
        None, "--tail", help="Start at the last N lines of each worker's log (0: none, with -f only new ones)"
    ),
) -> None:
    """Print (and follow) an endpoint's worker logs."""
    params: dict[str, str | int] = {"follow": str(follow).lower()}
    if worker:
        params["worker"] = worker
    if tail is not None:
        params["tail"] = tail  # 0: none of the past (with -f: only what comes from now on)
    try:
        with httpx.stream(
            "GET",
            f"{api_url()}/v1/endpoints/{endpoint}/logs",
            params=params,
            headers={"Authorization": f"Bearer {api_key()}"},
            timeout=None,
        ) as resp:
            if resp.status_code >= 400:
                resp.read()
                fail(f"{resp.json().get('error', resp.text)} (HTTP {resp.status_code})")
            for line in resp.iter_lines():
                typer.echo(line)
    except httpx.HTTPError as exc:
        fail(f"cannot reach Ember at {api_url()}: {exc}")
    except KeyboardInterrupt:
        pass


def releases(
    endpoint: str = typer.Argument(..., help="Endpoint id or name"),
    as_json: bool = typer.Option(False, "--json", help="Print the releases (or the log) as JSON"),
    log: int | None = typer.Option(None, "--log", help="Print the whole build log of this release"),
    follow: bool = typer.Option(
        False, "-f", "--follow", help="Follow the builds in progress (steps and log) until they end"
    ),
) -> None:
    """List an endpoint's releases and their build status (or one release's build log).

    With -f, first follow the git builds in progress (exit 1 when the last one failed)."""
    if log is not None:
        build = call("GET", f"/v1/endpoints/{endpoint}/releases/{log}/log")
        if as_json:
            print_json(build)
            return
        typer.echo(build["log"])
        console.print(f"release {build['release']}: {build['status']}")
        return
    followed = follow_builds(endpoint) if follow else None
    rows = call("GET", f"/v1/endpoints/{endpoint}/releases")
    if as_json:
        print_json(rows)
    else:
        print_table(
            ("RELEASE", "STATUS", "SERVING", "CREATED", "IMAGE/COMMIT"),
            (
                (
                    r["release"],
                    r["status"],
                    "*" if r["serving"] else "",
                    r["createdAt"],
                    r.get("commit") or r.get("image"),
                )
                for r in rows
            ),
        )
        for r in rows:
            if r["status"] == "FAILED" and r.get("logTail") and not follow:
                console.print(f"[red]release {r['release']} failed:[/]\n{escape(r['logTail'])}")
    if followed == "FAILED":
        raise typer.Exit(1)


def rollback(
    endpoint: str = typer.Argument(..., help="Endpoint id or name"),
    release: int | None = typer.Argument(
        None, help="Release number to serve (see `ember releases`; default: the one before the current)"
    ),
) -> None:
    """Serve an earlier release again (the previous one by default)."""
    body = {"release": release} if release is not None else {}
    record = call("POST", f"/v1/endpoints/{endpoint}/rollback", json_body=body)
    console.print(f"Endpoint {record['name']} now serves release {record['release']}")


def exec_(
    worker: str = typer.Argument(..., help="Worker id"),
    command: list[str] = typer.Argument(..., help="Command, after --"),
) -> None:
    """Run a command in a worker and print its output."""
    result = call("POST", f"/v1/workers/{worker}/exec", json_body={"command": command}, timeout_s=120)
    sys.stdout.write(result["output"])
    raise typer.Exit(result["exitCode"])


def ssh(worker: str = typer.Argument(..., help="Worker id")) -> None:
    """Open an interactive shell in a worker (Docker workers: docker exec -it; local: a shell in its dir)."""
    info = call("GET", f"/v1/workers/{worker}/shell")
    argv = info["argv"]
    try:
        raise typer.Exit(subprocess.call(argv))
    except FileNotFoundError:
        fail(f"cannot run {argv[0]!r} on this machine")
