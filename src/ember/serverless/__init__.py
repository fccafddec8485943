"""Ember's worker SDK: `start({"handler": fn})` and `progress_update(job, x)`, as in `runpod.serverless`.

Standard library only, and this module imports almost nothing until `start` runs, so that a worker's
cold start stays short. It must never import server-side parts of Ember.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Protocol

    class _ProgressSink(Protocol):
        """What `progress_update` hands updates to: the running worker (or local session)."""

        def progress(self, job: Mapping[str, object], value: object) -> None: ...


__all__ = ["start", "progress_update", "VERSION"]

VERSION = "0.1.0"

_active: _ProgressSink | None = None
# Set by `ember dev` while it loads a handler file: `start` hands it the config (and it raises, ending
# the file's execution there) instead of running a worker process.
_capture: Callable[[Mapping[str, object]], None] | None = None


def start(config: Mapping[str, object]) -> None:
    """Run the worker described by `config` and exit the process when it is done.

    Keys: `handler` (required; sync, async, generator or async generator function taking the job dict),
    `concurrency_modifier` (current -> wanted concurrency, called before each take), `return_aggregate_stream`
    (generator chunks also returned as the final output list), `refresh_worker` (exit after one job).
    With `--test_input` or without `RUNPOD_WEBHOOK_GET_JOB` it runs one local job instead (exit 0/1).
    """
    if _capture is not None:
        _capture(config)
    from ember.serverless.main import main

    raise SystemExit(main(config))


def progress_update(job: Mapping[str, object], progress: object) -> None:
    """Report progress for a running job; `/status` shows it as the output while IN_PROGRESS.

    Never blocks on the network: the update is queued and dropped if the job has already finished.
    """
    if _active is None:
        return
    _active.progress(job, progress)
