"""The console's account pages: billing (usage by endpoint and day, the balance and the worker limit that
follows from it), the host's model cache, network volumes and registry logins. Each shows the records the
API gives (`api.manage.account_view`, `api.volumes.volumes_of` and `api.models.models_for`, the registry-auth
service) for the signed-in account alone; the admin's pages cover every account. Nothing here writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ember.api.deps import Runtime, runtime
from ember.api.manage import account_view
from ember.api.models import models_for
from ember.api.registry_auth import registry_auths
from ember.api.views import iso
from ember.api.volumes import volumes_of
from ember.console.charts import DAY_S, Chart, day_text, short_dollars, stacked_bars
from ember.console.render import Viewer, render, viewer_of
from ember.core.errors import InvalidInput, NotFound, Problem
from ember.core.limits import DEFAULT_TABLE, LimitRow
from ember.core.money import format_dollars
from ember.store.accounts import DayUsage, KeyInfo

router = APIRouter(include_in_schema=False)
WINDOWS_DAYS = (14, 30)


@dataclass(frozen=True)
class Account:
    id: str
    name: str


def key_of(viewer: Viewer) -> KeyInfo:
    """The viewer as the API sees a caller with the account's key."""
    return KeyInfo(viewer.account_id, "admin" if viewer.is_admin else "user", None, None)


async def accounts_in_view(rt: Runtime, viewer: Viewer, selected: str = "") -> list[Account]:
    """The accounts a page covers: the viewer's own; every account for the admin, or the one it
    `selected`. Another account named by a tenant, or an unknown one, is NotFound."""
    if not viewer.is_admin:
        if selected and selected != viewer.account_id:
            raise NotFound(f"account {selected!r} not found")
        row = await rt.store.run(rt.store.accounts.get, viewer.account_id)
        return [Account(viewer.account_id, str(row["name"]) if row else viewer.account_id)]
    everyone = await every_account(rt)
    if not selected:
        return everyone
    chosen = [a for a in everyone if a.id == selected]
    if not chosen:
        raise NotFound(f"account {selected!r} not found")
    return chosen


async def every_account(rt: Runtime) -> list[Account]:
    """All accounts, the admin's first, then by name."""
    rows = sorted(await rt.store.run(rt.store.accounts.all), key=lambda r: (not r["is_admin"], r["name"]))
    return [Account(str(r["id"]), str(r["name"])) for r in rows]


# ---- billing -------------------------------------------------------------------------------------
def _window(days: str) -> int:
    if days.isdigit() and int(days) in WINDOWS_DAYS:
        return int(days)
    allowed = " or ".join(map(str, WINDOWS_DAYS))
    raise InvalidInput(f"days must be {allowed}", [Problem("days", f"must be {allowed}", days)])


def usage_chart(rows: Sequence[DayUsage], days: Sequence[int], names: dict[str, str], every: bool) -> Chart:
    """The billing chart of `rows`: one series per endpoint or volume, labelled with its account's name
    when the chart covers `every` account."""
    values: dict[tuple[str, int], tuple[int, int]] = {}
    labels: dict[str, str] = {}
    for r in rows:
        key = f"{r.kind}:{r.resource_id}"
        seconds, micros = values.get((key, r.day), (0, 0))
        values[(key, r.day)] = (seconds + r.seconds, micros + r.amount_micros)
        label = r.name or r.resource_id or "(unnamed)"
        if r.kind == "volume":
            label = "volume " + label
        if every:
            label += f" ({names.get(r.account_id, r.account_id)})"
        labels[key] = label
    return stacked_bars(days, values, labels)


def limit_rows(table: Sequence[LimitRow] | None, balance_micros: int) -> list[dict[str, object]]:
    """The worker-limit table for display, marking the row the balance falls in."""
    rows = sorted(table or DEFAULT_TABLE, key=lambda r: r.min_balance_micros)
    at = 0
    for i, row in enumerate(rows):
        if balance_micros >= row.min_balance_micros:
            at = i
    return [
        {"from": short_dollars(r.min_balance_micros), "workers": r.max_workers, "current": i == at}
        for i, r in enumerate(rows)
    ]


@router.get("/console/billing")
async def billing_page(request: Request, days: str = "14", account: str = "") -> Response:
    viewer = await viewer_of(request)
    window = _window(days)
    rt = runtime(request)
    shown = await accounts_in_view(rt, viewer, account)
    today = int(rt.clock.now() // DAY_S)
    day_list = list(range(today - window + 1, today + 1))
    every = viewer.is_admin and not account
    rows = await rt.store.run(
        rt.store.accounts.usage_by_day, None if every else [a.id for a in shown], day_list[0] * DAY_S
    )
    names = {a.id: a.name for a in shown}
    cost: dict[str, int] = {}
    for r in rows:
        cost[r.account_id] = cost.get(r.account_id, 0) + r.amount_micros
    records = []
    for a in shown:
        record = await rt.store.run(account_view, rt, a.id)
        record["windowCost"] = "$" + format_dollars(cost.get(a.id, 0))
        records.append(record)
    limits = None
    if len(records) == 1:
        row = await rt.store.run(rt.store.accounts.get, shown[0].id)
        balance = int(row["balance_micros"]) if row else 0
        limits = limit_rows(rt.limit_table, balance)
    chart = usage_chart(rows, day_list, names, every)
    return render(
        request,
        "billing.html",
        viewer,
        accounts=records,
        limits=limits,
        chart=chart,
        window=window,
        windows=WINDOWS_DAYS,
        selected=account,
        choices=await every_account(rt) if viewer.is_admin else [],
        first_day=day_text(day_list[0]),
        last_day=day_text(day_list[-1]),
    )


# ---- models, volumes, registry logins ------------------------------------------------------------
@router.get("/console/models")
async def models_page(request: Request) -> Response:
    viewer = await viewer_of(request)
    rt = runtime(request)
    models = await models_for(rt, key_of(viewer))
    return render(request, "models.html", viewer, models=models)


@router.get("/console/volumes")
async def volumes_page(request: Request) -> Response:
    viewer = await viewer_of(request)
    rt = runtime(request)
    items = []
    for a in await accounts_in_view(rt, viewer):
        for record in await volumes_of(rt, a.id):
            items.append({"account": a, "volume": record})
    return render(request, "volumes.html", viewer, volumes=items)


@router.get("/console/registry")
async def registry_page(request: Request) -> Response:
    viewer = await viewer_of(request)
    rt = runtime(request)
    service = registry_auths(rt)
    items = []
    for a in await accounts_in_view(rt, viewer):
        for auth in await service.of_account(a.id):
            items.append(
                {
                    "account": a,
                    "id": auth.id,
                    "name": auth.name,
                    "createdAt": iso(auth.created_at),
                    "usedBy": await service.users(a.id, auth.id),
                }
            )
    return render(request, "registry.html", viewer, auths=items)
