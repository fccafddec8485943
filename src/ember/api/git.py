"""Git sources: `POST /v1/git/webhook` (GitHub push events, proven by `X-Hub-Signature-256`, no API key),
a release's build log, and the shape of an endpoint's `git` field. Builds themselves run in the loop."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api.deps import Runtime, RuntimeDep, caller, found, own_endpoint, read_body
from ember.api.errors import json_response
from ember.core import json_body
from ember.core.errors import InvalidInput, Problem, Unauthorized
from ember.core.json_body import Json, JsonObject
from ember.core.outbound import git_url_problems
from ember.core.secrets import looks_sealed
from ember.core.specs import spec_from_json, spec_to_json

router = APIRouter(prefix="/v1")
log = logging.getLogger("ember.git")
WEBHOOK_BODY_LIMIT = 25 * 1024 * 1024  # GitHub caps webhook payloads at 25 MB
GIT_DEFAULTS = {"branch": "main", "dockerfile": "Dockerfile", "context": "."}
GIT_FIELDS = ("url", "branch", "dockerfile", "context", "webhookSecret")


def normalise_git(
    git: JsonObject,
    previous: JsonObject | None,
    *,
    admin: bool,
    seal: Callable[[str], str] | None = None,
) -> JsonObject:
    """An endpoint's `git` field with defaults filled in and a webhook secret (kept from `previous`, else
    new). Raises InvalidInput naming every bad field. `url` is https or ssh (`core.outbound`); only the
    `admin` may name `file://` or a path on the server. With `seal`, a new secret is stored sealed (the
    kept one already is); `webhook_secret` opens it where a signature is checked."""
    problems = [Problem(f"git.{k}", "unknown field") for k in git if k not in GIT_FIELDS]
    out: JsonObject = {**GIT_DEFAULTS, **{k: v for k, v in git.items() if v is not None}}
    for key in GIT_FIELDS:
        value = out.get(key)
        if key in out and (not isinstance(value, str) or not value.strip()):
            problems.append(Problem(f"git.{key}", "must be a non-empty string", value))
        elif key == "url" and key in out:
            problems.extend(git_url_problems(value, admin=admin))
    branch = out.get("branch")
    if isinstance(branch, str) and branch.startswith(("-", "refs/")):
        problems.append(Problem("git.branch", "must be a branch name (like main)", branch))
    if problems:
        raise InvalidInput("invalid git source", problems)
    kept = (previous or {}).get("webhookSecret")
    secret = out.get("webhookSecret")
    if not isinstance(secret, str):  # not given (a given one is a non-empty string by now)
        secret = out["webhookSecret"] = kept if isinstance(kept, str) and kept else secrets.token_hex(20)
    if seal is not None and secret != kept:
        out["webhookSecret"] = seal(secret)
    return out


def webhook_secret(rt: Runtime, git: JsonObject) -> str:
    """An endpoint's webhook secret in the clear ("" when it has none or this server's key cannot open
    it: no signature then matches)."""
    value = git.get("webhookSecret")
    if not isinstance(value, str) or not value:
        return ""
    sealer = rt.services.sealer
    if sealer is None or not looks_sealed(value):
        return value  # stored before secrets were sealed (the 0006 migration seals these)
    try:
        return str(sealer.open(value))
    except InvalidInput:
        return ""


def repo_key(url: str) -> str:
    """A repository URL reduced for matching: no scheme, credentials, `.git` or trailing slash;
    `git@host:owner/name` and `https://host/owner/name` give the same key."""
    text = url.strip().rstrip("/")
    text = text.removesuffix(".git").rstrip("/")
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme == "file":
            return rest
        rest = rest.rsplit("@", 1)[-1] if "@" in rest.split("/", 1)[0] else rest
        host, _, path = rest.partition("/")
        return f"{host.split(':')[0].lower()}/{path}"
    if "@" in text and ":" in text and not text.startswith("/"):  # scp-like: git@github.com:owner/name
        host, _, path = text.split("@", 1)[1].partition(":")
        return f"{host.lower()}/{path}"
    return text


def signature_ok(secret: str, body: bytes, header: str) -> bool:
    """Whether `header` is GitHub's `sha256=<hex HMAC-SHA256 of body>` under `secret` (constant time)."""
    if not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode())


def _event(body: bytes, content_type: str) -> Json:
    """The event of a JSON body, or of a form body's `payload` field (GitHub offers both)."""
    try:
        if content_type.startswith("application/x-www-form-urlencoded"):
            payload = parse_qs(body.decode("utf-8")).get("payload", [""])[0]
            return json_body.parse(payload.encode("utf-8"))
        return json_body.parse(body)
    except (InvalidInput, UnicodeError):
        return None


@router.post(
    "/git/webhook",
    tags=["git"],
    summary="GitHub push webhook: rebuild matching git endpoints",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "properties": {"payload": {"type": "string"}}}
                },
            },
        }
    },
    responses=B.error_responses(401),
)
async def webhook(request: Request, rt: RuntimeDep) -> Response:
    """No API key: the HMAC signature under an endpoint's `git.webhookSecret` is the proof. Every
    endpoint whose repository and branch match, and whose secret signed the body, gets a new release."""
    body = await read_body(request, WEBHOOK_BODY_LIMIT)
    header = request.headers.get("x-hub-signature-256", "")
    if not header:
        raise Unauthorized("missing X-Hub-Signature-256: sign the payload with the endpoint's webhook secret")
    event = _event(body, request.headers.get("content-type", ""))
    if not isinstance(event, dict):
        event = {}
    repo = event.get("repository")
    if not isinstance(repo, dict):
        # Nothing to match a secret against; an unsigned or foreign body learns nothing more.
        raise Unauthorized("signature does not match any endpoint of this repository")
    urls = {
        repo_key(u)
        for k in ("clone_url", "ssh_url", "html_url", "git_url")
        if isinstance(u := repo.get(k), str)
    }
    ref_value = event.get("ref")
    ref = ref_value if isinstance(ref_value, str) else ""
    kind = request.headers.get("x-github-event", "push")
    verified, matched = False, []
    for ep in await rt.store.run(rt.store.endpoints.list):
        spec = spec_from_json(ep["spec"])
        git = spec.git or {}
        if not git.get("url") or repo_key(str(git["url"])) not in urls:
            continue
        secret = webhook_secret(rt, git)
        if not secret or not signature_ok(secret, body, header):
            continue
        verified = True
        if kind == "push" and ref == f"refs/heads/{git.get('branch') or 'main'}":
            matched.append((ep, spec))
    if not verified:
        log.warning("git_webhook_refused repository=%s", sorted(urls))
        raise Unauthorized("signature does not match any endpoint of this repository")
    redeployed = []
    now = rt.clock.now()
    for ep, spec in matched:
        number = await rt.store.run(
            rt.store.endpoints.add_release, ep["id"], spec_to_json(spec), "BUILDING", now
        )
        log.info("git_webhook_release endpoint=%s release=%d ref=%s", ep["id"], number, ref)
        redeployed.append(ep["id"])
    if redeployed:
        rt.signals.builds.set()
    return json_response({"redeployed": redeployed, "event": kind, "ref": ref})


@router.get(
    "/endpoints/{ref}/releases/{number}/log", tags=["endpoints"], summary="A release's build log (so far)"
)
async def release_log(ref: str, number: int, request: Request, rt: RuntimeDep) -> Response:
    who = await caller(request)  # not a dependency: a bad `number` answers 400 before a bad key
    ep = await own_endpoint(rt, who.account_id, ref)
    row = await found(
        rt, f"release {number} of endpoint {ref!r}", rt.store.endpoints.release, ep["id"], number
    )
    return json_response(
        {"release": number, "status": row["status"], "commit": row["commit"], "log": row["log"] or ""}
    )
