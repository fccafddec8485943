"""Hosts: the admin adds a GPU machine (`POST /v1/hosts`, which answers the token its agent joins
with, once) and lists them with capacity, use and last contact; the machine's agent (`ember agent`)
connects out to `/agent/v1/…` with that token: it reports its GPUs and workers, long-polls its orders
(launch, stop, exec, logs), answers them, and fetches the source snapshots it launches."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from ember.api import bodies as B
from ember.api.deps import AdminDep, RuntimeDep, found, key_from, new_token, runtime
from ember.api.errors import json_response
from ember.build.archive import pack
from ember.core import hosts as H
from ember.core.errors import Conflict, InvalidInput, NotFound, Problem, Unauthorized
from ember.core.ids import make_id
from ember.core.json_body import JsonObject
from ember.core.workers import LIVE
from ember.store.rows import HostRow, WorkerRow

router = APIRouter()
BODY_LIMIT = 1024 * 1024
REPORT_LIMIT = 8 * 1024 * 1024  # a report lists every worker the host runs
ORDERS_WAIT_MAX_S = 30.0
_LIVE = frozenset(s.value for s in LIVE)


# ---- the admin's view --------------------------------------------------------------------------------
def host_view(
    workers: list[WorkerRow],
    *,
    id: str,
    name: str,
    state: str,
    hostname: str,
    backends: list[str],
    slots: Mapping[str, Sequence[str]],
    last_seen_at: float | None,
    contact_s: float | None,
) -> dict[str, object]:
    """A host as `ember hosts` shows it: its GPUs in all and in use by its live workers, last contact
    (`contact_s` seconds ago; None: never)."""
    mine = [w for w in workers if w["host"] == id and w["state"] in _LIVE]
    used: dict[str, int] = {}
    for w in mine:
        if w["gpu_type"] and w["gpu_devices"]:
            used[w["gpu_type"]] = used.get(w["gpu_type"], 0) + len(w["gpu_devices"].split(","))
    return {
        "id": id,
        "name": name,
        "state": state,
        "hostname": hostname,
        "backends": backends,
        "gpus": {t: len(d) for t, d in slots.items()},
        "gpusUsed": used,
        "workers": len(mine),
        "lastSeenAt": last_seen_at,
        "lastContactS": contact_s,
    }


@router.get("/v1/hosts", tags=["hosts"], summary="GPU machines: capacity, use, last contact (admin only)")
async def list_hosts(_: AdminDep, rt: RuntimeDep) -> Response:
    rows = await rt.store.run(rt.store.hosts.list)
    workers = list(await rt.store.run(lambda: rt.store.workers.list()))
    views = []
    if (local := rt.fleet.local_host) is not None:  # the embedded agent: this machine, in contact now
        views.append(
            host_view(
                workers,
                id=H.LOCAL,
                name=H.LOCAL,
                state=H.HostState.READY.value,
                hostname="",
                backends=sorted(rt.fleet.local),
                slots=local.slots,
                last_seen_at=None,
                contact_s=0.0,
            )
        )
    for r in rows:
        views.append(
            host_view(
                workers,
                id=r["id"],
                name=r["name"],
                state=r["state"],
                hostname=r["hostname"],
                backends=H.backends_of(r["backends"]),
                slots=json.loads(r["slots"] or "{}"),
                last_seen_at=(last := r["last_seen_at"]),
                contact_s=None if last is None else round(max(0.0, rt.clock.now() - last), 1),
            )
        )
    return json_response({"hosts": views})


@router.post(
    "/v1/hosts",
    tags=["hosts"],
    summary="Add a host; answers the token its agent joins with, once (admin only)",
    status_code=201,
    openapi_extra=B.body_doc(B.HostCreate),
    responses=B.error_responses(409),
)
async def create_host(
    _: AdminDep,
    rt: RuntimeDep,
    body: Annotated[JsonObject, Depends(B.ObjectBody(BODY_LIMIT, B.HostCreate))],
) -> Response:
    name = H.check_name(body.get("name"))
    host_id = make_id("host", uuid.uuid4().hex[:12])
    token = "eh_" + new_token(24)
    if not await rt.store.run(
        lambda: rt.store.hosts.create(id=host_id, name=name, token=token, now=rt.clock.now())
    ):
        raise Conflict(f"a host named {name!r} exists already")
    join = f"ember agent --server {rt.api_url} --token {token}"
    return json_response({"id": host_id, "name": name, "token": token, "join": join}, 201)


@router.delete(
    "/v1/hosts/{ref}",
    tags=["hosts"],
    summary="Remove a host: its agent is refused from now on, its workers are replaced (admin only)",
    status_code=204,
    responses=B.error_responses(404),
)
async def delete_host(ref: str, _: AdminDep, rt: RuntimeDep) -> Response:
    row = await found(rt, f"host {ref!r}", rt.store.hosts.get, ref)
    await rt.store.run(rt.store.hosts.delete, row["id"])
    rt.signals.reconcile.set()
    return Response(status_code=204)


# ---- the agent's side ----------------------------------------------------------------------------------
async def agent_host(request: Request) -> HostRow:
    """The host whose token the request carries (401 otherwise)."""
    token = key_from(request)
    row = await runtime(request).store.run(runtime(request).store.hosts.by_token, token) if token else None
    if row is None:
        raise Unauthorized("missing or unknown host token (POST /v1/hosts gives one)")
    return row


AgentDep = Annotated[HostRow, Depends(agent_host)]


@router.post("/agent/v1/report", include_in_schema=False)
async def report(host: AgentDep, request: Request, rt: RuntimeDep) -> Response:
    """The agent's GPUs, runtimes and workers, now; `fresh` on its first report after it started (the
    orders it had taken and not answered are lost with its old process)."""
    body = await B.json_object(request, REPORT_LIMIT)
    slots = H.parse_slots(body.get("gpus", {}))
    backends = H.parse_backends(body.get("backends", []))
    workers = body.get("workers", [])
    if not isinstance(workers, list) or not all(isinstance(w, dict) for w in workers):
        raise InvalidInput("workers: a list of objects", [Problem("workers", "a list of objects")])
    listed = body.get("orders", [])
    working = [i for i in listed if isinstance(i, int)] if isinstance(listed, list) else []
    if not isinstance(listed, list) or len(working) != len(listed):
        raise InvalidInput("orders: a list of order ids", [Problem("orders", "a list of order ids")])
    hostname = body.get("hostname")
    s = rt.store
    before = await s.run(
        lambda: s.hosts.report(
            host["id"],
            slots=slots,
            backends=backends,
            observed=workers,  # type: ignore[arg-type]  # objects, checked above
            hostname=hostname if isinstance(hostname, str) else "",
            now=rt.clock.now(),
        )
    )
    if before is None:
        raise NotFound(f"host {host['id']} was removed")
    with rt.signals.in_txn():  # "h" when orders go to the agent again
        if body.get("fresh") is True:  # what its earlier process took is lost with it
            requeued = await s.run(s.hosts.requeue_sent, host["id"])
        else:
            sent_before = rt.clock.now() - H.ORDER_IN_FLIGHT_S
            requeued = await s.run(s.hosts.requeue_unheard, host["id"], working, sent_before)
    if requeued:
        rt.signals.host_ordered(host["id"])
    if before != H.HostState.READY:
        rt.signals.reconcile.set()  # a host joined or came back: placement may use it now
    return json_response({"id": host["id"], "name": host["name"]})


@router.post("/agent/v1/orders", include_in_schema=False)
async def orders(host: AgentDep, request: Request, rt: RuntimeDep, wait: float = 20.0) -> Response:
    """The host's queued orders; with none, held up to `wait` seconds for one."""
    s = rt.store
    wait = min(max(0.0, wait), ORDERS_WAIT_MAX_S)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        if await request.is_disconnected():  # its orders are not taken for a poll nobody reads
            return Response(status_code=204)
        taken = await s.run(s.hosts.take_orders, host["id"], rt.clock.now())
        left = deadline - loop.time()
        if taken or left <= 0:
            break
        # A wake-up ends the wait at once; a lost one costs a second.
        await rt.signals.orders.wait("host:" + host["id"], min(left, 1.0))
    out = [{"id": o["id"], "kind": o["kind"], "body": json.loads(o["body"])} for o in taken]
    return json_response({"orders": out})


@router.post("/agent/v1/orders/{order_id}", include_in_schema=False)
async def answer(order_id: int, host: AgentDep, request: Request, rt: RuntimeDep) -> Response:
    """The agent's answer to one of its orders: `{"error": …}` when it failed, else what it asked for."""
    body = await B.json_object(request, REPORT_LIMIT)
    with rt.signals.in_txn():  # "o": the waiter, wherever it waits
        answered = await rt.store.run(rt.store.hosts.answer, host["id"], order_id, body)
    if not answered:
        raise NotFound(f"order {order_id} is not waiting for this host's answer")
    rt.signals.order_answered(order_id)
    return Response(status_code=204)


@router.get("/agent/v1/sources/{digest}", include_in_schema=False)
async def source(digest: str, host: AgentDep, rt: RuntimeDep) -> Response:
    """A source snapshot, as a gzip'd tar, for a worker the agent launches."""
    if not re.fullmatch(r"[0-9a-f]{8,64}", digest):
        raise NotFound(f"no source snapshot {digest!r}")
    path = rt.shared / "sources" / digest
    if not path.is_dir():
        raise NotFound(f"no source snapshot {digest!r}")
    data = await asyncio.to_thread(pack, path)
    return Response(data, media_type="application/gzip")
