"""The JSON value types the client decodes the server's answers into (no I/O, no behaviour)."""

from __future__ import annotations

from typing import TypeAlias

Json: TypeAlias = dict[str, "Json"] | list["Json"] | str | int | float | bool | None

# A `/status`, `/runsync`, `/stream` or `/cancel` answer: a JSON object (with `status` once checked).
JobRecord: TypeAlias = dict[str, Json]
