"""The `ember` command: one Typer app; each command group lives in its own module."""

from __future__ import annotations

import typer

from ember.cli import account_cmds as acct
from ember.cli import console_cmds, dev_cmds, simulate_cmd
from ember.cli import endpoint_cmds as ep
from ember.cli import host_cmds as hosts
from ember.cli import resource_cmds as res
from ember.cli import server_cmds as srv

app = typer.Typer(
    help="Ember: self-hosted serverless GPU endpoints, wire-compatible with RunPod.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
)

app.command()(srv.up)
app.command()(srv.server)
app.command()(srv.migrate)
app.command()(dev_cmds.dev)
app.command()(ep.deploy)
app.command()(ep.endpoints)
app.command()(ep.delete)
app.command()(ep.workers)
app.command()(ep.jobs)
app.command()(ep.logs)
app.command()(ep.releases)
app.command()(ep.rollback)
app.command("exec", context_settings={"allow_extra_args": True})(ep.exec_)
app.command()(ep.ssh)
app.command()(console_cmds.console)
app.command()(acct.balance)
app.command()(acct.usage)
app.command()(simulate_cmd.simulate)
accounts = typer.Typer(help="Accounts (admin)")
accounts.command("create")(acct.accounts_create)
accounts.command("credit")(acct.credit)
app.add_typer(accounts, name="accounts")
app.add_typer(res.models_app, name="models")
app.add_typer(res.volumes_app, name="volumes")
app.add_typer(hosts.hosts_app, name="hosts")
app.command()(hosts.agent)
registry = typer.Typer(help="Container registry logins", no_args_is_help=True)
registry.command("add")(res.registry_add)
registry.command("ls")(res.registry_ls)
registry.command("rm")(res.registry_rm)
app.add_typer(registry, name="registry")


def _optional_groups() -> None:
    """Command groups owned by other packages register here when present."""
    try:
        from ember.cli import build_cmds
    except ImportError:
        return
    for name in ("init", "build", "push"):
        fn = getattr(build_cmds, name, None)
        if fn is not None:
            app.command(name)(fn)
    login = getattr(build_cmds, "registry_login", None)
    if login is not None:
        registry.command("login")(login)


_optional_groups()


def main() -> None:
    app(prog_name="ember")  # `python -m ember.cli.main` too completes and prints usage as `ember`


if __name__ == "__main__":
    main()
