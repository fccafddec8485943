"""The management API under /v1: accounts, templates, endpoints (create/list/get/update/delete),
releases and rollback, workers and their history, logs, exec, jobs and billing usage.
Routes write desired state and wake the loops; they never start or stop compute themselves."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse

from ember.api import bodies as B
from ember.api import views
from ember.api.deps import AdminDep, CallerDep, Runtime, RuntimeDep, caller, found, new_token, own_endpoint
from ember.api.errors import json_response
from ember.core.errors import BackendError, Conflict, InvalidInput, NotFound, Problem
from ember.core.ids import make_id
from ember.core.json_body import JsonObject
from ember.core.limits import DEFAULT_TABLE, max_workers
from ember.core.money import format_dollars, parse_dollars
from ember.core.names import name_problems
from ember.core.workers import WorkerState
from ember.store.accounts import KeyInfo
from ember.store.rows import WorkerRow

router = APIRouter(prefix="/v1")
BODY_LIMIT = 1024 * 1024


# ---- accounts ----------------------------------------------------------------------------------------
@router.post(
    "/accounts",
    tags=["accounts"],
    summary="Create an account (admin only)",
    status_code=201,
    openapi_extra=B.body_doc(B.AccountCreate),
)
async def create_account(
    _: AdminDep,
    rt: RuntimeDep,
    body: Annotated[JsonObject, Depends(B.ObjectBody(BODY_LIMIT, B.AccountCreate))],
) -> Response:
    name = body.get("name")
    problems = name_problems(name.strip() if isinstance(name, str) else name)
    if problems or not isinstance(name, str):
        raise InvalidInput("invalid account name: " + "; ".join(p.message for p in problems), problems)
    account_id = make_id("account", uuid.uuid4().hex[:16])
    key = "ek_" + new_token(24)
    now = rt.clock.now()
    await rt.store.run(
        lambda: rt.store.accounts.create(
            id=account_id,
            name=name.strip(),
            is_admin=False,
            balance_micros=rt.limits.initial_balance_micros,
            now=now,
        )
    )
    await rt.store.run(lambda: rt.store.accounts.add_key(key, account_id=account_id, kind="user", now=now))
    return json_response({"id": account_id, "name": name.strip(), "apiKey": key}, 201)


def account_view(rt: Runtime, account_id: str) -> dict[str, object]:
    """The account's record: its balance, the worker limit that follows from it (the server's limit
    table) and its live workers. Blocking (call through `store.run`); NotFound for an unknown account.
    The console's billing page shows the same record."""
    row = rt.store.accounts.get(account_id)
    if row is None:
        raise NotFound(f"account {account_id!r} not found")
    live = rt.store.workers.count_live_by_account().get(account_id, 0)
    return views.account(
        row,
        max_workers=max_workers(int(row["balance_micros"]), rt.limit_table or DEFAULT_TABLE),
        workers=live,
    )


@router.get("/accounts/me", tags=["accounts"], summary="The caller's account")
async def me(who: CallerDep, rt: RuntimeDep) -> Response:
    return json_response(await rt.store.run(account_view, rt, who.account_id))


@router.post(
    "/accounts/{account_id}/credits",
    tags=["accounts"],
    summary="Add credit (admin only)",
    openapi_extra=B.body_doc(B.Credits),
)
async def add_credits(
    account_id: str,
    _: AdminDep,
    rt: RuntimeDep,
    body: Annotated[JsonObject, Depends(B.ObjectBody(BODY_LIMIT, B.Credits))],
) -> Response:
    amount = parse_dollars(body.get("amount"), field="amount")
    if amount <= 0:
        raise InvalidInput("amount must be positive", [Problem("amount", "must be > 0", body.get("amount"))])
    await found(rt, f"account {account_id!r}", rt.store.accounts.credit, account_id, amount, rt.clock.now())
    rt.signals.poke_scaler()
    return json_response(await rt.store.run(account_view, rt, account_id))


@router.get("/accounts/me/balance", tags=["billing"], summary="Balance and limits")
async def balance(who: CallerDep, rt: RuntimeDep) -> Response:
    return await me(who, rt)


# ---- billing -----------------------------------------------------------------------------------------
@router.get("/billing/usage", tags=["billing"], summary="Billed seconds and cost per worker and state")
async def usage(
    request: Request,
    who: CallerDep,
    rt: RuntimeDep,
    endpointId: str | None = None,
    workerId: str | None = None,  # noqa: N803
    to: str | None = None,
) -> Response:
    q = request.query_params
    from_at = _time_param(q.get("from"), "from")
    to_at = _time_param(to, "to")
    endpoint_id = await _usage_endpoint(rt, who.account_id, endpointId) if endpointId else None
    rows = await rt.store.run(
        lambda: rt.store.accounts.usage(
            who.account_id, endpoint_id=endpoint_id, worker_id=workerId, from_at=from_at, to_at=to_at
        )
    )
    items = [
        {
            "workerId": r["worker_id"],
            "endpointId": r["endpoint_id"],
            "state": r["state"],
            "workerType": r["worker_type"],
            "gpuTypeId": r["gpu_type"],
            "seconds": int(r["seconds"] or 0),
            "cost": format_dollars(int(r["amount_micros"] or 0)),
        }
        for r in rows
    ]
    total = sum(int(r["amount_micros"] or 0) for r in rows)
    return json_response({"items": items, "totalCost": format_dollars(total)})


async def _usage_endpoint(rt: Runtime, account_id: str, ref: str) -> str:
    """The id of the caller's endpoint `ref` (an id or a name) for usage: a live endpoint first, then
    a deleted one, whose usage stays readable. Raises NotFound when the account has neither."""
    for include_deleted in (False, True):
        row = await rt.store.run(rt.store.endpoints.get, ref, account_id, include_deleted=include_deleted)
        if row is not None:
            return str(row["id"])
    raise NotFound(f"endpoint {ref!r} not found")


def _time_param(value: str | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidInput(
            f"{name} must be epoch seconds or an ISO-8601 time", [Problem(name, "bad time", value)]
        )


# ---- workers -----------------------------------------------------------------------------------------
async def _own_worker(rt: Runtime, who: KeyInfo, worker_id: str) -> WorkerRow:
    return await found(rt, f"worker {worker_id!r}", rt.store.workers.get, worker_id, who.account_id)


@router.get("/workers/{worker_id}", tags=["workers"], summary="One worker")
async def get_worker(worker_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    return json_response(views.worker(await _own_worker(rt, who, worker_id), rt.clock.now()))


@router.get("/workers/{worker_id}/history", tags=["workers"], summary="A worker's state transitions")
async def worker_history(worker_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    await _own_worker(rt, who, worker_id)
    rows = await rt.store.run(rt.store.workers.history, worker_id)
    return json_response([views.event(r) for r in rows])


EXEC_TIMEOUT_DEFAULT_S = 60.0
EXEC_TIMEOUT_MAX_S = 3600.0


def _exec_request(body: JsonObject) -> tuple[list[str], float]:
    """(command, timeout_s) of an exec body, or InvalidInput naming every bad field."""
    problems = []
    raw_command = body.get("command")
    command = [c for c in raw_command if isinstance(c, str)] if isinstance(raw_command, list) else []
    if not isinstance(raw_command, list) or not raw_command or len(command) != len(raw_command):
        problems.append(Problem("command", "must be a non-empty list of strings", raw_command))
    elif any("\x00" in c for c in command):
        problems.append(Problem("command", "must not contain NUL characters"))
    raw_timeout = body.get("timeoutS", EXEC_TIMEOUT_DEFAULT_S)
    timeout_s = EXEC_TIMEOUT_DEFAULT_S
    if isinstance(raw_timeout, bool) or not isinstance(raw_timeout, int | float):
        problems.append(Problem("timeoutS", "must be a number of seconds", raw_timeout))
    elif not 0 < raw_timeout <= EXEC_TIMEOUT_MAX_S:
        problems.append(
            Problem("timeoutS", f"must be more than 0 and at most {EXEC_TIMEOUT_MAX_S:g}", raw_timeout)
        )
    else:
        timeout_s = float(raw_timeout)
    if problems:
        raise InvalidInput("invalid exec: " + "; ".join(f"{p.field} {p.message}" for p in problems), problems)
    return command, timeout_s


@router.post(
    "/workers/{worker_id}/exec",
    tags=["workers"],
    summary="Run a command in a worker",
    openapi_extra=B.body_doc(B.Exec),
    responses=B.error_responses(409, 502),
)
async def worker_exec(worker_id: str, request: Request, who: CallerDep, rt: RuntimeDep) -> Response:
    row = await _own_worker(rt, who, worker_id)
    command, timeout_s = _exec_request(await B.parse_body(request, B.Exec, BODY_LIMIT))
    if row["state"] == WorkerState.STOPPED.value:
        raise Conflict(f"worker {worker_id} is stopped")
    backend = rt.backend_for(row)
    result = await backend.exec(worker_id, command, timeout_s=timeout_s)
    return json_response({"exitCode": result.exit_code, "output": result.output.decode("utf-8", "replace")})


@router.get(
    "/workers/{worker_id}/shell",
    tags=["workers"],
    summary="How to open an interactive shell",
    responses=B.error_responses(502),
)
async def worker_shell(worker_id: str, who: CallerDep, rt: RuntimeDep) -> Response:
    row = await _own_worker(rt, who, worker_id)
    backend = rt.backend_for(row)
    shell = getattr(backend, "shell_command", None)
    if shell is None:
        raise BackendError(f"the {row['backend']} backend has no interactive shell")
    return json_response({"argv": shell(worker_id)})


# ---- logs --------------------------------------------------------------------------------------------
_LOG_SCAN_S = 1.0  # how often a followed stream looks for workers that appeared since


@router.get("/endpoints/{ref}/logs", tags=["logs"], summary="Worker logs (follow with ?follow=true)")
async def logs(
    ref: str,
    request: Request,
    rt: RuntimeDep,
    worker: str | None = None,
    follow: bool = False,
    tail: int | None = None,
) -> Response:
    who = await caller(request)  # not a dependency: a bad `follow` or `tail` answers 400 first
    ep = await own_endpoint(rt, who.account_id, ref)
    rows = await rt.store.run(lambda: rt.store.workers.list(endpoint_id=ep["id"], include_stopped=True))
    if worker is not None:
        rows = [r for r in rows if r["id"] == worker]
        if not rows:
            raise NotFound(f"worker {worker!r} not found on endpoint {ref!r}")
    return StreamingResponse(_log_lines(rt, ep["id"], rows, worker, follow, tail), media_type="text/plain")


async def _log_lines(
    rt: Runtime, endpoint_id: str, rows: Sequence[WorkerRow], only: str | None, follow: bool, tail: int | None
) -> AsyncIterator[bytes]:
    """Every listed worker's lines, prefixed with its id. With `follow`: each worker is followed until
    it is STOPPED (through a venv build, an image pull or a restart, when it does not run), and workers
    that appear later are followed too, from their first line (`tail` is about the past)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1000)
    seen: set[str] = set()
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()

    async def alive(worker_id: str) -> bool:
        row = await rt.store.run(rt.store.workers.get, worker_id)
        return row is not None and row["state"] != WorkerState.STOPPED.value

    async def pump(row: WorkerRow, lines: int | None) -> None:
        try:
            backend = rt.backend_for(row)
            live = follow and row["state"] != WorkerState.STOPPED.value
            wid = row["id"]
            async for line in backend.logs(
                wid, tail=lines, follow=live, alive=(lambda: alive(wid)) if live else None
            ):
                await queue.put(f"[{wid}] {line.rstrip()}\n")
        except Exception as exc:  # a worker whose logs are gone must not end the whole stream
            await queue.put(f"[{row['id']}] (logs unavailable: {exc})\n")

    def start(row: WorkerRow, lines: int | None) -> None:
        seen.add(row["id"])
        tasks.append(asyncio.create_task(pump(row, lines)))

    for row in rows:
        start(row, tail)
    next_scan = loop.time() + _LOG_SCAN_S
    try:
        while True:
            if not follow and all(t.done() for t in tasks) and queue.empty():
                return
            try:
                line = await asyncio.wait_for(queue.get(), _LOG_SCAN_S)
            except TimeoutError:
                line = None
            if follow and only is None and loop.time() >= next_scan:
                next_scan = loop.time() + _LOG_SCAN_S
                for row in await rt.store.run(lambda: rt.store.workers.list(endpoint_id=endpoint_id)):
                    if row["id"] not in seen:
                        start(row, None)  # new since the stream began: all of it is news
            if line is not None:
                yield line.encode("utf-8", "replace")
    finally:
        for t in tasks:
            t.cancel()


# ---- jobs --------------------------------------------------------------------------------------------
@router.get("/jobs", tags=["jobs"], summary="Recent jobs of the caller's account")
async def list_jobs(
    request: Request,
    rt: RuntimeDep,
    endpointId: str | None = None,
    state: str | None = None,  # noqa: N803
    limit: int = 100,
) -> Response:
    who = await caller(request)  # not a dependency: a bad `limit` answers 400 before a bad key
    endpoint_id = None
    if endpointId:
        endpoint_id = (await own_endpoint(rt, who.account_id, endpointId))["id"]
    rows = await rt.store.run(
        lambda: rt.store.jobs.list(who.account_id, endpoint_id, state, max(1, min(limit, 1000)))
    )
    out = []
    for r in rows:
        rec: dict[str, object] = {
            "id": r["id"],
            "endpointId": r["endpoint_id"],
            "status": r["state"],
            "workerId": r["worker_id"],
            "createdAt": views.iso(r["created_at"]),
            "completedAt": views.iso(r["completed_at"]),
        }
        if r["error"]:
            rec["error"] = r["error"][:500]
        if r["webhook_state"]:
            webhook: dict[str, object] = {"state": r["webhook_state"], "attempts": r["webhook_attempts"]}
            if r["webhook_error"]:
                webhook["error"] = r["webhook_error"]
            rec["webhook"] = webhook
        out.append(rec)
    return json_response(out)
