"""Following things that change, by polling the API until they settle or Ctrl-C: `ember jobs -f` (a
line for every new job and every change of state) and a git release's build (`ember releases -f`,
`ember deploy --git --wait`: the build log as it grows, with the steps shown live on a terminal)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence

import typer
from rich.text import Text

from ember.cli.answers import JobLine, ReleaseLine
from ember.cli.http import QueryParams, call
from ember.cli.output import console, is_terminal, plain
from ember.cli.progress import BuildView

POLL_S = 1.0
JOB_COLUMNS = ("ID", "ENDPOINT", "STATUS", "WORKER", "CREATED", "ERROR")
_STATUS_STYLE = {"COMPLETED": "green", "FAILED": "red", "TIMED_OUT": "red", "CANCELLED": "yellow"}


def job_row(job: JobLine) -> tuple[object, ...]:
    return (
        job["id"],
        job["endpointId"],
        job["status"],
        job["workerId"],
        job["createdAt"],
        job.get("error"),
    )


def _print_job(job: JobLine, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(job, ensure_ascii=False))
    elif is_terminal():
        style = _STATUS_STYLE.get(job["status"], "cyan")
        line = Text()
        for i, value in enumerate(job_row(job)):
            line.append("  " if i else "")
            if i == 2:
                line.append(f"{plain(value):<11}", style)
            else:
                line.append(plain(value))
        console.print(line, soft_wrap=True)
    else:
        typer.echo("\t".join(plain(v) for v in job_row(job)))


def follow_jobs(params: QueryParams, as_json: bool, poll_s: float = POLL_S) -> None:
    """Print the account's jobs (oldest first), then a line for each new job and each change of a
    job's status or worker, until Ctrl-C. JSON: one record per line."""
    if not as_json:
        if is_terminal():
            console.print("  ".join(JOB_COLUMNS), style="bold", highlight=False)
        else:
            typer.echo("\t".join(JOB_COLUMNS))
    seen: dict[str, tuple[str, str | None]] = {}
    try:
        while True:
            rows: list[JobLine] = call("GET", "/v1/jobs", params=params)
            current: dict[str, tuple[str, str | None]] = {}
            for job in reversed(rows):  # the API lists newest first
                key = (job["status"], job["workerId"])
                current[job["id"]] = key
                if seen.get(job["id"]) != key:
                    _print_job(job, as_json)
            seen = current  # jobs that left the window (or the --state filter) are forgotten
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return


def new_lines(before: Sequence[str], now: Sequence[str]) -> list[str]:
    """The lines of `now` that follow what `before` showed. The server keeps a build log's last lines
    only, so once it is full `now` starts part-way into `before`: find where they meet."""
    if list(now[: len(before)]) == list(before):
        return list(now[len(before) :])
    for skip in range(1, len(before)):
        overlap = len(before) - skip
        if list(now[:overlap]) == list(before[skip:]):
            return list(now[overlap:])
    return list(now)  # nothing in common: all of it is new


def follow_build(endpoint: str, number: int, poll_s: float = POLL_S, deadline: float | None = None) -> str:
    """Show release `number`'s build log as it grows until the build ends (or the monotonic `deadline`
    passes: then BUILDING); its final status."""
    shown: list[str] = []
    with BuildView(console, f"building release {number}") as view:
        while deadline is None or time.monotonic() < deadline:
            build = call("GET", f"/v1/endpoints/{endpoint}/releases/{number}/log")
            lines = (build["log"] or "").splitlines()
            for line in new_lines(shown, lines):
                view.line(line)
            shown = lines
            if build["status"] != "BUILDING":
                view.failed = build["status"] == "FAILED"
                return str(build["status"])
            time.sleep(poll_s)
    return "BUILDING"


def building(releases: Iterable[ReleaseLine]) -> list[int]:
    """The numbers of the releases still building, oldest first."""
    return sorted(r["release"] for r in releases if r["status"] == "BUILDING")


def follow_builds(
    endpoint: str, numbers: Iterable[int] | None = None, deadline: float | None = None
) -> str | None:
    """Follow the builds of `numbers` (default: every release of `endpoint` that is building), oldest
    first, reporting each outcome; the last one's final status, or None when there was none."""
    status = None
    try:
        if numbers is None:
            numbers = building(call("GET", f"/v1/endpoints/{endpoint}/releases"))
        for number in numbers:
            status = follow_build(endpoint, number, deadline=deadline)
            if status == "BUILDING":
                return status
            style = "green" if status == "READY" else "red"
            console.print(f"release {number}: [{style}]{status}[/]", highlight=False)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    return status
