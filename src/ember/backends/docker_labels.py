"""What a worker container's name and labels say: whose it is (its name `ember-<worker id>`, renamed when
a parked container is resumed for a new worker, since labels cannot change) and what it runs (labels:
endpoint, account, release, instance), and the `Observed` the Docker backend reports from them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from ember.backends.base import Observed
from ember.backends.docker_api import Container, ContainerState
from ember.backends.docker_warm import WARM_PREFIX

LABEL_WORKER = "ember.worker-id"
LABEL_ENDPOINT = "ember.endpoint-id"
LABEL_ACCOUNT = "ember.account-id"
LABEL_RELEASE = "ember.release"
LABEL_MANAGED = "ember.managed"
# Which control plane owns a container (one Docker engine may serve several Ember installations).
LABEL_INSTANCE = "ember.instance"


def container_name(worker_id: str) -> str:
    return f"ember-{worker_id}"


def started_at(state: ContainerState) -> float | None:
    """Docker's StartedAt (RFC 3339 with nanoseconds, or the zero time) as epoch seconds."""
    raw = state.get("StartedAt") or ""
    if not raw or raw.startswith("0001-"):
        return None
    trimmed = re.sub(r"(\.\d{6})\d*", r"\1", raw).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(trimmed).timestamp()
    except ValueError:
        return None


def worker_of(name: str, labels: Mapping[str, str]) -> str | None:
    """The worker a container serves, from its name (None: a parked container, no worker's)."""
    name = name.lstrip("/")
    if name.startswith(WARM_PREFIX):
        return None
    if name.startswith("ember-"):
        return name[len("ember-") :]
    return labels.get(LABEL_WORKER, "")


def observed(container: Container, worker_id: str, since: float | None) -> Observed:
    labels = container.labels
    state = container.attrs.get("State", {})
    running = bool(state.get("Running"))
    exit_code = None if running else state.get("ExitCode")
    detail = state.get("Status", "")
    if state.get("Error"):
        detail += f": {state['Error']}"
    if state.get("OOMKilled"):
        detail += " (out of memory)"
    return Observed(
        worker_id=worker_id,
        endpoint_id=labels.get(LABEL_ENDPOINT, ""),
        release=int(labels.get(LABEL_RELEASE, "0") or 0),
        running=running,
        exit_code=exit_code,
        started_at=since if since is not None else started_at(state),
        detail=detail,
    )
