"""Every `ember` command, option and argument says what it is for in `--help`: the test walks the
whole Click command tree that Typer builds, so a new option without help text fails here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from ember.cli.main import app


def _commands(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, command) for the command and every command under it. Typer builds the tree from its own
    copy of Click, so groups are recognised by their `commands` rather than by class."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, f"{path} {name}")


def _undocumented() -> list[str]:
    missing = []
    for path, command in _commands(typer.main.get_command(app), "ember"):
        if not (command.help or command.short_help):
            missing.append(f"{path} (the command itself)")
        for param in command.params:
            text = getattr(param, "help", None)
            if not (isinstance(text, str) and text.strip()):
                missing.append(f"{path} {param.opts[0] if param.opts else param.name}")
    return missing


def test_every_command_option_and_argument_has_help_text() -> None:
    assert _undocumented() == []


def test_the_walk_sees_nested_commands_and_arguments() -> None:
    paths = {path for path, _ in _commands(typer.main.get_command(app), "ember")}
    assert {"ember deploy", "ember registry add", "ember accounts credit", "ember models pull"} <= paths
    deploy = typer.main.get_command(app).commands["deploy"]  # type: ignore[attr-defined]
    assert {p.param_type_name for p in deploy.params} == {"argument", "option"}
