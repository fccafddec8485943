"""Strict decoding of the JSON bodies clients and workers send: RFC 8259 JSON in UTF-8 that Ember can
store in either database and send on unchanged. Pure: bytes in, a value or `InvalidInput` out.

Python's `json` accepts more than JSON, and more than Ember can keep: `NaN` and `Infinity` (then
echoed as invalid JSON), numbers such as `1e999` that overflow to infinity, `\\ud800` escapes that decode
to lone surrogates (which no UTF-8 encoder, database driver or response will take), and nesting
deep enough to exhaust the interpreter's recursion limit. Each is refused here, naming where it is.
"""

from __future__ import annotations

import json
import re
from typing import TypeAlias

from ember.core.errors import InvalidInput, Problem

# Deepest nesting accepted in any body. Deep enough for real user data in a job's input or output
# (which is also stored, re-encoded, and parsed again by the worker SDK), shallow enough that every
# one of those steps stays far below Python's recursion limit of 1000 frames.
MAX_DEPTH = 512
# At most this many problems are listed in one answer (a body may hold thousands of bad values).
MAX_PROBLEMS = 10

# A \u escape of a UTF-16 surrogate (D800-DFFF). Pairs decode to one character and are fine; only a
# body holding such an escape can decode to a lone surrogate, so only such bodies are walked.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# A number with a fraction or an exponent, or a NaN/Infinity constant, may be somewhere in a text that
# holds one of these (perhaps only inside a string); a text that holds none has neither.
_MAY_NOT_BE_FINITE = re.compile(r"[0-9][.eE]|NaN|Infinity")
_CONTAINERS = (dict, list)
_ALL_BUT_OPENERS = bytes(b for b in range(256) if b not in b"[{")


class _NotFinite:
    """Stands in, while decoding, for a number JSON cannot hold, until its place is reported."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token


# A JSON value as `parse` gives it. Code that reads into one narrows it (`isinstance`); a value only
# passed on or serialised can be typed `object`.
Json: TypeAlias = dict[str, "Json"] | list["Json"] | str | int | float | bool | None
JsonObject: TypeAlias = dict[str, Json]

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dump(value: object) -> str:
    """`value` as compact JSON text (no spaces, non-ASCII kept), as Ember stores and sends it."""
    return _COMPACT.encode(value)


def parse(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Json:
    """The value of the JSON text `raw`.

    Raises InvalidInput (its message starts "malformed JSON body") for invalid UTF-8 or JSON syntax,
    and, with a problem naming each place (`input.a[2]`), for NaN or infinite numbers, lone
    surrogates, and nesting deeper than `max_depth`. A body costs one `json.loads` (with a Python call
    per float, to catch overflow) and two scans of the text; only a body with more brackets than
    `max_depth` is also walked for its depth, and only one holding a surrogate escape is re-encoded.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"malformed JSON body: not UTF-8 ({exc.reason} at byte {exc.start})",
            [Problem("body", "must be JSON text in UTF-8")],
        ) from None
    odd: list[str] = []

    def not_finite(token: str) -> _NotFinite:
        odd.append(token)
        return _NotFinite(token)

    def finite(token: str) -> float | _NotFinite:
        value = float(token)
        return not_finite(token) if value - value else value  # inf - inf is nan, which is truthy

    try:
        if _MAY_NOT_BE_FINITE.search(text):
            value = json.loads(text, parse_constant=not_finite, parse_float=finite)
        else:  # no float and no NaN/Infinity anywhere: the plain decoder, made once, does the same
            value = json.loads(text)
    except RecursionError:
        raise InvalidInput(
            f"malformed JSON body: nested deeper than {max_depth} levels",
            [Problem("body", f"must not nest arrays and objects deeper than {max_depth} levels")],
        ) from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing a number of over 4300 digits
        raise InvalidInput(f"malformed JSON body: {exc}", [Problem("body", "is not valid JSON")]) from None
    openers = len(raw.translate(None, _ALL_BUT_OPENERS))  # an upper bound of the depth, at C speed
    deep = openers > max_depth and _depth_above(value, max_depth)
    if odd or deep or (_SURROGATE_ESCAPE.search(text) and _lone_surrogates(value)):
        problems = _problems(value, max_depth)
        if odd and not problems:  # defensive: a stand-in must never pass for a value
            problems = [Problem("body", f"{odd[0]} is not a finite JSON number")]
        if problems:
            raise InvalidInput(
                "invalid JSON body: " + "; ".join(f"{p.field} {p.message}" for p in problems), problems
            )
    parsed: Json = value  # no stand-in is left in it: what `json.loads` made of JSON text is JSON
    return parsed


def _depth_above(value: object, max_depth: int) -> bool:
    """Whether `value` nests arrays and objects deeper than `max_depth` (level by level, no paths)."""
    level: list[dict[str, object] | list[object]] = [value] if isinstance(value, _CONTAINERS) else []
    for _ in range(max_depth):
        level = [
            child
            for v in level
            for child in (v.values() if isinstance(v, dict) else v)
            if isinstance(child, _CONTAINERS)
        ]
        if not level:
            return False
    return True


def _lone_surrogates(value: object) -> bool:
    """Whether any string in `value` (a key or a value) holds a lone surrogate: `json.dumps` keeps them
    as they are and UTF-8 refuses them, both at C speed."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _problems(value: object, max_depth: int) -> list[Problem]:
    """Every place (up to MAX_PROBLEMS) holding a non-finite number or a lone surrogate, or nested too
    deep, found depth first with an explicit stack. Paths are built only for the places reported."""
    problems: list[Problem] = []
    # (value, its parent's path, its key or index, its depth: the top-level value is at depth 1)
    stack: list[tuple[object, str, str | int | None, int]] = [(value, "", None, 1)]
    while stack and len(problems) < MAX_PROBLEMS:
        v, parent, key, depth = stack.pop()
        if isinstance(v, _CONTAINERS):  # (`json.loads` makes plain dicts and lists, no subclasses)
            if depth > max_depth:
                message = f"nests arrays and objects deeper than {max_depth} levels"
                problems.append(Problem(_path(parent, key), message))
                continue
            path = _path(parent, key) if key is not None else ""
            if isinstance(v, dict):
                for k in v:
                    if _lone_surrogate(k):
                        problems.append(Problem(_path(path, k), "has a name with a lone UTF-16 surrogate"))
                entries: list[tuple[str | int, object]] = list(v.items())
            else:
                entries = list(enumerate(v))
            stack.extend((item, path, k, depth + 1) for k, item in reversed(entries) if _worth_a_look(item))
        elif isinstance(v, _NotFinite):
            problems.append(Problem(_path(parent, key), f"{v.token} is not a finite JSON number"))
        elif isinstance(v, str) and _lone_surrogate(v):
            message = "contains a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)"
            problems.append(Problem(_path(parent, key), message))
    return problems


def _worth_a_look(v: object) -> bool:
    return isinstance(v, (dict, list, _NotFinite)) or (isinstance(v, str) and not v.isascii())


def _lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _path(parent: str, key: str | int | None) -> str:
    """`parent.key` or `parent[3]` (`body` at the top), with any lone surrogate in a key written as its
    escape so that the path itself can be sent."""
    if key is None:
        return parent or "body"
    if isinstance(key, int):
        return f"{parent or 'body'}[{key}]"
    shown = key.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{parent}.{shown}" if parent else shown
