"""How the CLI prints tables: a rich table on a terminal, and plain tab-separated lines with every value
whole when standard output is a pipe or a file, so that a script can read ids (`ember jobs | cut -f1`).

Rich lays a table out to the console's width and cuts what does not fit with an ellipsis; through a pipe
that width is a guess (80 columns), which cut job ids in half. On a terminal, id columns fold onto a
second line rather than lose characters; free-text columns (an error, a reason) may be cut there
(`Col.max_width`), never in plain output."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Lines are never wrapped at the console's width (a guess of 80 columns through a pipe): a long id, path
# or URL stays on its line for a script, and a terminal wraps what it must itself.
console = Console(soft_wrap=True)


@dataclass(frozen=True)
class Col:
    """A table column: its header and, for free text, how wide it may grow on a terminal."""

    header: str
    max_width: int | None = None


def is_terminal(out: Console | None = None) -> bool:
    """Whether standard output (or `out`'s file) is a terminal: live bars and rich tables there, plain
    lines otherwise."""
    return (out or console).is_terminal


def plain(value: object) -> str:
    """A value as one tab-separated field: no tab or line break inside, `-` for nothing."""
    text = "-" if value is None or value == "" else str(value)
    return " ".join(text.replace("\t", " ").splitlines())


def print_table(columns: Sequence[str | Col], rows: Iterable[Sequence[object]]) -> None:
    """Print `rows` under `columns`: a rich table on a terminal, else a header line and one line per
    row, fields separated by tabs, each value whole."""
    cols = [c if isinstance(c, Col) else Col(c) for c in columns]
    if not is_terminal():
        typer.echo("\t".join(c.header for c in cols))
        for row in rows:
            typer.echo("\t".join(plain(v) for v in row))
        return
    table = Table()
    for c in cols:
        if c.max_width is None:  # an id or a short value: rich narrows the free-text columns first
            table.add_column(c.header, overflow="fold", no_wrap=True)
        else:
            table.add_column(c.header, overflow="ellipsis", max_width=c.max_width)
    for row in rows:
        table.add_row(*(Text("-" if v is None or v == "" else str(v)) for v in row))
    console.print(table)
