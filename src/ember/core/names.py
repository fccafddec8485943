"""The rule for the names people give things (accounts, templates, network volumes, registry logins):
what they may hold and how long they may be. Pure; endpoint names, which also appear in URLs, keep
their narrower rule in `core.specs.validate`.

A name is 1-128 characters of printable Unicode (letters, digits, marks, punctuation and symbols of
any script, and the plain space; callers strip spaces at either end). Control characters (NUL, tabs,
newlines), invisible format characters, other separators and unassigned or private-use code points
are refused: they break logs, terminals and tables, and PostgreSQL cannot store NUL at all.
"""

from __future__ import annotations

from ember.core.errors import Problem

NAME_MAX_CHARS = 128


def name_problems(value: object, field: str = "name", *, max_chars: int = NAME_MAX_CHARS) -> list[Problem]:
    """Every problem with `value` as a name (an empty list when it is fine). Values are shown only
    when short and printable, so that an answer never carries 100,000 characters or a NUL back."""
    if not isinstance(value, str):
        return [Problem(field, "must be a string", None if isinstance(value, dict | list) else value)]
    problems = []
    shown = value if len(value) <= max_chars and value.isprintable() else None
    if not value.strip():
        problems.append(Problem(field, "must not be empty", shown))
    if len(value) > max_chars:
        problems.append(Problem(field, f"must be at most {max_chars} characters (got {len(value)})"))
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        problems.append(Problem(field, f"must hold printable characters only; {_escape(bad)} is not", shown))
    return problems


def _escape(char: str) -> str:
    """`U+0000` for a character that cannot be shown as itself."""
    return f"U+{ord(char):04X}"
