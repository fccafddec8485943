"""The server's log lines: plain text, or one JSON object per line (`EMBER_LOG_FORMAT=json`) carrying the
job, worker and endpoint ids as fields. Configured once by the entry point (`logging_config`); the code
that logs passes ids with `extra={"job_id": …, "worker_id": …, "endpoint_id": …}`."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

from ember.core.ids import PREFIXES

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
ID_FIELDS = {"job": "job_id", "sync_job": "job_id", "worker": "worker_id", "endpoint": "endpoint_id"}
# An id in a path: its kind's prefix and a hex token (route words such as `job-done` are not ids).
_PATH_ID = re.compile("^(" + "|".join(re.escape(PREFIXES[kind]) for kind in ID_FIELDS) + r")-[0-9a-f]{8,}$")
_FIELD_OF = {PREFIXES[kind]: field for kind, field in ID_FIELDS.items()}
# Loggers that say little of use at INFO.
QUIET = ("httpx", "alembic.runtime.migration")
# What every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def parse_log_format(value: str) -> str:
    """`value` normalised ("text" or "json"); ValueError naming the choices otherwise."""
    norm = value.strip().lower()
    if norm not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return norm


def ids_in_path(path: str) -> dict[str, str]:
    """The job, worker and endpoint ids named in a request path (`/v2/ep-…/job-done/wk-…/job-…`),
    recognised by their prefixes (`core.ids`) and hex tokens."""
    found: dict[str, str] = {}
    for part in path.split("?", 1)[0].split("/"):
        match = _PATH_ID.match(part)
        if match is not None:
            found.setdefault(_FIELD_OF[match.group(1)], part)
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601), level, logger, message, every `extra=` field
    (job_id, worker_id, endpoint_id, …), exc_info when there is one. Uvicorn's access lines also get
    method, path and status, and the ids their path names."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                out[key] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            _, method, path, _, status = record.args
            out.update(method=method, path=path, status=status)
            for key, value in ids_in_path(str(path)).items():
                out.setdefault(key, value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def logging_config(log_format: str, level: str = "INFO", *, access_log: bool = False) -> dict[str, object]:
    """A `logging.config.dictConfig` document: one handler on stderr for the root logger in `log_format`
    (see `parse_log_format`); uvicorn's loggers write through it too (pass `log_config=None` to
    uvicorn), its access log at INFO when `access_log`, else off."""
    formatter: dict[str, object] = (
        {"()": JsonFormatter} if parse_log_format(log_format) == "json" else {"format": TEXT_FORMAT}
    )
    loggers: dict[str, dict[str, object]] = {name: {"level": "WARNING"} for name in QUIET}
    loggers.update(
        {
            "uvicorn": {"level": "WARNING", "handlers": [], "propagate": True},
            "uvicorn.error": {"level": "WARNING", "handlers": [], "propagate": True},
            "uvicorn.access": {
                "level": "INFO" if access_log else "CRITICAL",
                "handlers": [],
                "propagate": access_log,
            },
        }
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"ember": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "ember"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": loggers,
    }
