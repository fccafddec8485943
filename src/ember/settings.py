"""Settings, read once by the entry points (`cli`, `app`) from EMBER_* variables and passed down as values."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ember.core.jobs import LOST_WORKER_REQUEUES
from ember.core.outbound import Network, parse_allow
from ember.core.sandbox import parse_mode
from ember.logs import parse_log_format


def default_home() -> Path:
    return Path.home() / ".ember"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBER_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    # Storage every control-plane replica reads and writes (a shared filesystem when there are several;
    # default: home): source snapshots and uploads, the key that seals secrets and registry passwords,
    # and the installation's id that labels its containers. The rest of home is this process's own.
    shared_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # The address workers use to reach the control plane; defaults to http://host:port.
    public_url: str | None = None
    database_url: str | None = None  # default: sqlite file under home
    backend: str = "local"  # local | docker | memory
    gpus: str = ""  # virtual capacity, e.g. "TEST_GPU:4"
    # Whether this process runs workers on its own machine (the embedded agent, host "local"); false
    # for a control plane whose workers all run on hosts (`ember agent`).
    local_workers: bool = True
    # A host whose agent has not reported for this long is lost: its workers are replaced elsewhere.
    host_timeout_s: float = Field(default=30.0, gt=0)
    admin_key: str | None = None
    registry: str | None = None
    # Money: initial balances (dollars, decimal strings) and the active-worker discount.
    admin_initial_balance: str = "1000.00"
    initial_balance: str = "0.00"
    active_discount_pct: int = 30
    # Timings (seconds). Workers ping every ping_interval_ms; lost after ping_timeout_s of silence.
    ping_interval_ms: int = 2000
    ping_timeout_s: float = 10.0
    init_timeout_s: float = 420.0
    take_hold_s: float = 20.0
    # A request body must arrive whole within this long, else 408 (a slow client, or one that sends
    # less than its Content-Length, would otherwise hold its connection and request open forever).
    body_timeout_s: float = 30.0
    stop_grace_s: float = 10.0
    tick_s: float = 0.5
    # After answering a job-path request the event loop polls for the next event for up to this long
    # (microseconds; adaptive, see `core.idle_poll`) instead of letting its CPU sleep; 0: never.
    idle_poll_us: int = Field(default=200, ge=0, le=10_000)
    meter_interval_s: float = 5.0
    # Where jobs of a vanished worker go: re-queued this many times, then failed.
    lost_worker_requeues: int = LOST_WORKER_REQUEUES
    # Unhealthy workers restart after backoff_base_s, doubling up to an hour, for up to 7 days.
    backoff_base_s: float = 10.0
    # A webhook that fails is tried again this long after, up to 3 attempts in all (as RunPod does).
    webhook_retry_s: float = 10.0
    # Calls a tenant chooses (webhooks, git remotes) reach public addresses only; these CIDR ranges
    # (comma-separated, e.g. "127.0.0.0/8,::1/128" or a private network's) are opened as well.
    outbound_allow: str = ""
    hf_endpoint: str | None = None
    model_cache_budget_gb: float = 200.0
    # Network volumes: price per GB and month of provisioned size (dollars); bytes in one "GB" on
    # disk; None tries loop-mounted images (hard size limit) and falls back to plain directories.
    volume_price_gb_month: str = "0.07"
    volume_unit_bytes: int = 1024**3
    volume_enforce: bool | None = None
    # Local workers' sandbox (bubblewrap): auto | required | off, see ember.core.sandbox. A server run
    # as root runs each account's workers as uid and gid sandbox_uid_base + the account's index (kept
    # in EMBER_HOME/runtime/sandbox-uids.json, one per account, in order of first use).
    sandbox: str = "auto"
    sandbox_uid_base: int = 200_000
    # FlashBoot: local workers of a release are forked from a template process that has imported what
    # the handler imports; at most this many templates run (least recently used retired); 0: off.
    templates_max: int = Field(default=4, ge=0)
    # Uploaded sources (`POST /v1/sources`, what `ember deploy DIR` sends): the archive's size as sent,
    # unpacked, and its number of members (files, directories, links).
    source_upload_max_bytes: int = 100 * 1024 * 1024
    source_unpacked_max_bytes: int = 500 * 1024 * 1024
    source_max_files: int = 20_000
    # GET /metrics (Prometheus) answers `Authorization: Bearer <metrics_token>` or the admin's key.
    metrics_token: str | None = None
    # The server's log lines: "text" (one line each) or "json" (one JSON object each, with the job,
    # worker and endpoint ids as fields); access_log adds one line per HTTP request.
    log_format: str = "text"
    access_log: bool = False
    # Warm containers (Docker): a scaled-down flex worker's container stays paused this long (seconds;
    # 0: never), unbilled, and the next cold start of the same release resumes it; at most this many.
    warm_container_s: float = Field(default=300.0, ge=0)
    warm_containers_max: int = Field(default=4, ge=0)

    @field_validator("outbound_allow")
    @classmethod
    def _outbound_ranges(cls, value: str) -> str:
        parse_allow(value)  # a typo stops the server at start-up, naming the entry
        return value

    @property
    def outbound_networks(self) -> tuple[Network, ...]:
        return parse_allow(self.outbound_allow)

    @field_validator("sandbox")
    @classmethod
    def _sandbox_mode(cls, value: str) -> str:
        return parse_mode(value).value  # a typo stops the server at start-up

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        return parse_log_format(value)  # a typo stops the server at start-up

    @property
    def api_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def shared(self) -> Path:
        return self.shared_dir or self.home

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'ember.db'}"
