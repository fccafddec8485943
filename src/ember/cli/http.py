"""The CLI's way to the API: base URL and key from EMBER_API_URL / EMBER_API_KEY (default: the local
admin key in EMBER_HOME), and API errors turned into one line a person can act on."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

import httpx
import typer
from rich.console import Console

err = Console(stderr=True)
# A request's query parameters, as httpx takes them.
QueryParams: TypeAlias = Mapping[str, str | int | float | bool | None]


def home() -> Path:
    return Path(os.environ.get("EMBER_HOME") or Path.home() / ".ember")


def api_url() -> str:
    return os.environ.get("EMBER_API_URL", "http://127.0.0.1:8000").rstrip("/")


def api_key() -> str:
    key = os.environ.get("EMBER_API_KEY")
    if key:
        return key
    path = home() / "admin_key"
    if path.exists():
        return path.read_text().strip()
    fail(f"no API key: set EMBER_API_KEY, or run `ember up` once so that {path} exists")
    return ""


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def call(
    method: str,
    path: str,
    *,
    json_body: object = None,
    params: QueryParams | None = None,
    timeout_s: float = 60.0,
    content: bytes | None = None,
    content_type: str | None = None,
) -> Any:
    """The API's answer (JSON, else text) to one request with a JSON body, or with raw `content` of
    `content_type` (an upload); one line and exit 1 on an error answer or no answer. The answer is as
    `json` parses it, untyped: a command names what it reads of it with a TypedDict of `cli.answers`."""
    url = api_url() + path
    headers = {"Authorization": f"Bearer {api_key()}"}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        resp = httpx.request(
            method,
            url,
            json=json_body,
            content=content,
            params=params,
            timeout=timeout_s,
            headers=headers,
        )
    except httpx.HTTPError as exc:
        fail(
            f"cannot reach Ember at {api_url()} ({exc.__class__.__name__}): is `ember server` running? "
            "Set EMBER_API_URL if it runs elsewhere."
        )
    if resp.status_code >= 400:
        try:
            body = resp.json()
        except ValueError:
            body = {"error": resp.text}
        message = body.get("error", resp.text) if isinstance(body, dict) else str(body)
        problems = body.get("problems") if isinstance(body, dict) else None
        if problems:
            message += "".join(f"\n  - {p.get('field')}: {p.get('message')}" for p in problems)
        fail(f"{message} (HTTP {resp.status_code})")
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return resp.text


def print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=None, ensure_ascii=False))
