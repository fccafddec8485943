"""`start(config)`'s keys, validated into a `WorkerConfig`: the user's handler and how to run it.

Pure: no I/O. The dict comes from user code, so every key is checked here at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import SupportsIndex, SupportsInt

from ember.serverless.execute import Handler


@dataclass(frozen=True)
class WorkerConfig:
    """The `start(config)` keys, validated."""

    handler: Handler
    # current concurrency -> the one wanted (anything `int()` takes, as RunPod's SDK allows)
    concurrency_modifier: Callable[[int], object] | None = None
    return_aggregate_stream: bool = False
    refresh_worker: bool = False

    @classmethod
    def from_dict(cls, config: Mapping[str, object]) -> WorkerConfig:
        handler = config.get("handler") if isinstance(config, dict) else None
        if not callable(handler):
            raise TypeError("start(config) needs a dict with a callable 'handler'")
        modifier = config.get("concurrency_modifier")
        if modifier is not None and not callable(modifier):
            raise TypeError("'concurrency_modifier' must be callable: current concurrency -> new one")
        return cls(
            handler=handler,
            concurrency_modifier=modifier,
            return_aggregate_stream=bool(config.get("return_aggregate_stream", False)),
            refresh_worker=bool(config.get("refresh_worker", False)),
        )

    def wanted_concurrency(self, current: int) -> int:
        """What the concurrency modifier asks for, at least 1 (`current` without a modifier).

        Raises whatever the modifier raises, and TypeError / ValueError for an answer that is no number.
        """
        if self.concurrency_modifier is None:
            return current
        return max(1, _as_int(self.concurrency_modifier(current)))


def _as_int(value: object) -> int:
    """`int(value)` for the types `int()` accepts; the TypeError `int()` raises for the others."""
    if isinstance(value, (int, float, str, bytes, bytearray, SupportsInt, SupportsIndex)):
        return int(value)
    raise TypeError(
        f"int() argument must be a string, a bytes-like object or a real number, not '{type(value).__name__}'"
    )
