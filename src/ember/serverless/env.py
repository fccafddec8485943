"""The worker's view of its environment (the `RUNPOD_*` variables) and the URLs built from it.

Pure: `WorkerEnv.from_environ(mapping)` reads a mapping given to it; URL builders are string functions
that follow RunPod's templates exactly (plain replacement, `&`-suffixes appended blindly).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

PING_JOB_IDS_MAX_BYTES = 64 * 1024
DEFAULT_PING_INTERVAL_S = 10.0
MIN_PING_INTERVAL_S = 1.0


@dataclass(frozen=True)
class WorkerEnv:
    """What the platform told this worker through its environment."""

    take_template: str | None
    done_template: str | None
    stream_template: str | None
    ping_template: str | None
    api_key: str
    worker_id: str
    hostname: str
    endpoint_id: str | None
    ping_interval_s: float

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, fallback_worker_id: str = "unknown") -> WorkerEnv:
        """Read the variables RunPod's SDK reads; unset ones become None (or their RunPod default)."""
        return cls(
            take_template=environ.get("RUNPOD_WEBHOOK_GET_JOB") or None,
            done_template=environ.get("RUNPOD_WEBHOOK_POST_OUTPUT") or None,
            stream_template=environ.get("RUNPOD_WEBHOOK_POST_STREAM") or None,
            ping_template=environ.get("RUNPOD_WEBHOOK_PING") or None,
            api_key=environ.get("RUNPOD_AI_API_KEY", ""),
            worker_id=environ.get("RUNPOD_POD_ID") or fallback_worker_id,
            hostname=environ.get("RUNPOD_POD_HOSTNAME", "unknown"),
            endpoint_id=environ.get("RUNPOD_ENDPOINT_ID") or None,
            ping_interval_s=parse_ping_interval_s(environ.get("RUNPOD_PING_INTERVAL")),
        )

    @property
    def pings_enabled(self) -> bool:
        """RunPod pings only with a key, a pod id and a ping URL; so does Ember's SDK."""
        return bool(self.api_key and self.worker_id and self.worker_id != "unknown" and self.ping_template)


def parse_ping_interval_s(raw: str | None) -> float:
    """`RUNPOD_PING_INTERVAL` is milliseconds; invalid or sub-second values fall back safely.

    RunPod integer-divides by 1000 and crashes below 1000 ms; Ember clamps to 1 s instead.
    """
    if raw is None or raw.strip() == "":
        return DEFAULT_PING_INTERVAL_S
    try:
        interval_ms = int(raw.strip())
    except ValueError:
        return DEFAULT_PING_INTERVAL_S
    if interval_ms <= 0:
        return DEFAULT_PING_INTERVAL_S
    return max(MIN_PING_INTERVAL_S, float(interval_ms // 1000))


def take_url(template: str, worker_id: str, *, free_slots: int, holding_jobs: bool) -> str:
    """Job-take URL: single take for one free slot, job-take-batch with `batch_size` for more."""
    base = template.replace("$ID", worker_id)
    in_progress = "1" if holding_jobs else "0"
    if free_slots <= 1:
        return f"{base}&job_in_progress={in_progress}"
    base = base.replace("/job-take/", "/job-take-batch/")
    return f"{base}&batch_size={free_slots}&job_in_progress={in_progress}"


def stop_url(template: str, worker_id: str) -> str | None:
    """Job-stop URL (same query string as job-take, no suffix); None when the template lacks `/job-take/`."""
    if "/job-take/" not in template:
        return None
    return template.replace("$ID", worker_id).replace("/job-take/", "/job-stop/")


def result_url(template: str, worker_id: str, job_id: str, *, is_stream: bool) -> str:
    """Job-done / job-stream URL: `$RUNPOD_POD_ID` → worker, then `$ID` → job, then `&isStream=`."""
    base = template.replace("$RUNPOD_POD_ID", worker_id).replace("$ID", job_id)
    return f"{base}&isStream={'true' if is_stream else 'false'}"


def with_take(done_url: str, slots: int) -> str:
    """A job-done URL asking an Ember server to piggy-back up to `slots` jobs on its answer.

    An Ember extension: servers that do not know `take` (RunPod) ignore the parameter.
    """
    return f"{done_url}&take={slots}"


def ping_url(template: str, worker_id: str, job_ids: list[str], *, version: str) -> str:
    """Ping URL with `job_id=<csv>` (omitted when idle, cut at a comma past 64 KiB) and the SDK version."""
    base = template.replace("$RUNPOD_POD_ID", worker_id)
    params = []
    if job_ids:
        params.append("job_id=" + quote(truncate_csv(job_ids, PING_JOB_IDS_MAX_BYTES), safe=""))
    params.append("ember_version=" + quote(version, safe=""))
    separator = "&" if "?" in base else "?"
    if base.endswith(("?", "&")):
        separator = ""
    return base + separator + "&".join(params)


def truncate_csv(items: list[str], max_bytes: int) -> str:
    """Comma-join `items`, dropping whole trailing items so the result fits in `max_bytes`."""
    out: list[str] = []
    size = 0
    for item in items:
        extra = len(item.encode()) + (1 if out else 0)
        if size + extra > max_bytes:
            break
        out.append(item)
        size += extra
    return ",".join(out)
