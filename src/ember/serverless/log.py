"""The worker SDK's structured log lines: an event name plus key=values, one line each, on stderr.

Kept off the `logging` module so that a cold import stays small; the level comes from
`RUNPOD_LOG_LEVEL` (or `RUNPOD_DEBUG_LEVEL`), read once by `configure`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import TextIO, TypedDict

LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40}


class _State(TypedDict):
    threshold: int
    stream: TextIO | None  # None: stderr (looked up at each write)


_state: _State = {"threshold": LEVELS["INFO"], "stream": None}
_lock = threading.Lock()


def configure(environ: Mapping[str, str], stream: TextIO | None = None) -> None:
    """Set the threshold from the environment and, for tests, the stream (default: stderr)."""
    raw = (environ.get("RUNPOD_LOG_LEVEL") or environ.get("RUNPOD_DEBUG_LEVEL") or "INFO").upper()
    _state["threshold"] = LEVELS.get(raw, LEVELS["INFO"])
    _state["stream"] = stream


def log(level: str, event: str, **fields: object) -> None:
    """Write `LEVEL event k=v …` when `level` passes the threshold; never raises."""
    if LEVELS.get(level, 20) < _state["threshold"]:
        return
    parts = [level, event]
    for key, value in fields.items():
        if value is None:
            continue
        text = str(value)
        if " " in text or not text:
            text = repr(text)
        parts.append(f"{key}={text}")
    line = "ember.serverless " + " ".join(parts) + "\n"
    stream = _state["stream"] or sys.stderr
    try:
        with _lock:
            stream.write(line)
            stream.flush()
    except (OSError, ValueError):
        pass


def debug(event: str, **fields: object) -> None:
    log("DEBUG", event, **fields)


def info(event: str, **fields: object) -> None:
    log("INFO", event, **fields)


def warn(event: str, **fields: object) -> None:
    log("WARN", event, **fields)


def error(event: str, **fields: object) -> None:
    log("ERROR", event, **fields)
