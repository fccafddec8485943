"""CLI commands about accounts and money: balance, usage, and (admin) accounts create and credit."""

from __future__ import annotations

import typer

from ember.cli.http import call, print_json
from ember.cli.output import console, print_table


def balance(
    as_json: bool = typer.Option(False, "--json", help="Print the account record as JSON"),
) -> None:
    """Show the account's balance, worker limit and current workers."""
    me = call("GET", "/v1/accounts/me")
    if as_json:
        print_json(me)
        return
    console.print(
        f"Account {me['name']} ({me['id']}): balance ${me['balance']}, "
        f"workers {me['workers']} of at most {me['maxWorkers']}"
    )


def usage(
    endpoint: str | None = typer.Option(None, "--endpoint", help="Only this endpoint (id or name)"),
    worker: str | None = typer.Option(None, "--worker", help="Only this worker (id)"),
    as_json: bool = typer.Option(False, "--json", help="Print the usage as JSON instead of a table"),
) -> None:
    """Show billed seconds and cost per worker and state."""
    params = {k: v for k, v in (("endpointId", endpoint), ("workerId", worker)) if v}
    data = call("GET", "/v1/billing/usage", params=params)
    if as_json:
        print_json(data)
        return
    print_table(
        ("WORKER", "ENDPOINT", "STATE", "TYPE", "GPU", "SECONDS", "COST $"),
        (
            (
                i["workerId"],
                i["endpointId"],
                i["state"],
                i["workerType"],
                i["gpuTypeId"],
                i["seconds"],
                i["cost"],
            )
            for i in data["items"]
        ),
    )
    console.print(f"Total: ${data['totalCost']}")


def accounts_create(
    name: str = typer.Argument(..., help="A name for the account"),
    as_json: bool = typer.Option(False, "--json", help="Print the account and its API key as JSON"),
) -> None:
    """Create an account (admin key only); prints its API key once."""
    acct = call("POST", "/v1/accounts", json_body={"name": name})
    if as_json:
        print_json(acct)
        return
    console.print(f"Account {acct['id']} created. API key (shown once): {acct['apiKey']}")


def credit(
    account: str = typer.Argument(..., help="Account id"),
    amount: str = typer.Argument(..., help="Dollars, e.g. 150.00"),
) -> None:
    """Add credit to an account (admin key only)."""
    acct = call("POST", f"/v1/accounts/{account}/credits", json_body={"amount": amount})
    console.print(f"Account {acct['id']}: balance ${acct['balance']}")
