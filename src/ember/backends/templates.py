"""FlashBoot on the local backend: per release, a template process that has imported what the handler
imports, from which workers are forked instead of started afresh (`ember.backends.forkserver` is the
template's side).

Learning. A release's first plain start gets a file to write into (fd EMBER_MODULES_FD); Ember's SDK
writes the names in sys.modules there when it takes its first job (runpod's SDK does not: its
releases keep plain starts). `harvest()` (from `observe`) reads a finished report, keeps the names
and starts the template in the background; later cold starts of that release fork from it.

Keys. A template serves one endpoint, release, source snapshot, interpreter, handler, environment
(less each worker's identity) and sandbox view: anything else is another key, and a launch of a new
key retires its endpoint's other templates, so a new release never runs the old one's.

Limits. At most `max_templates` templates run (starting or ready; least recently used retired
first; 0 disables FlashBoot). Templates are not workers: nothing bills them; they take host memory.
A retired template forks no more and exits once its last worker has (a sandboxed template's workers
live in its pid namespace and would die with it); the same on server shutdown. Templates of deleted
endpoints or of releases no longer current (`releases()`) are retired too.

Fallback. Whenever the template is missing, starting, dead, unfit (an import started a thread, left
a socket or GPU device open, or the host forbids the child's namespaces) or fails to answer a fork in
time, the worker starts plainly; a failing template is retired.

Sandbox. A sandboxed template runs in the bubblewrap view of its release's workers (same binds, uid,
cwd); each child takes private user, mount and IPC namespaces (its own /tmp and /dev/shm) and is not
dumpable. Workers with real GPUs are not forked in the sandbox: their device files are bound when a
sandbox starts, and a template cannot bind them per child.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

from ember.backends.base import LaunchSpec
from ember.backends.procs import proc_start_ticks, write_atomic
from ember.backends.sandbox import View
from ember.backends.template_proc import Failed, Forked, Recipe, TemplateProcess, Unfit, note

log = logging.getLogger("ember.templates")

MODULES_ENV = "EMBER_MODULES_FD"
# A worker's own variables: set in each forked child, never in its template.
IDENTITY_ENV = frozenset(
    {
        "RUNPOD_POD_ID", "RUNPOD_AI_API_KEY", "RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_WEBHOOK_POST_OUTPUT",
        "RUNPOD_WEBHOOK_POST_STREAM", "RUNPOD_WEBHOOK_PING", "CUDA_VISIBLE_DEVICES", MODULES_ENV,
    }
)  # fmt: skip
_REPORT_MAX_BYTES = 4 * 1024 * 1024
_MODULES_MAX = 50_000
_RELEASE_CHECK_S = 2.0
_START_FAILURES_MAX = 2
_LEARNERS_MAX = 4
_END = b"\n#end\n"
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_KEY_PART = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def recipe_for(
    spec: LaunchSpec, *, python: str, cwd: str, env: dict[str, str], view: View | None, bwrap: str | None
) -> Recipe | None:
    """The recipe of the template this worker could fork from; None when it must start plainly: a
    custom start command, no source directory, or real GPU devices in the sandbox."""
    if spec.command or not spec.source_dir or (view is not None and view.devices):
        return None
    handler = spec.handler.rpartition("/")[2]
    base = {k: v for k, v in env.items() if k not in IDENTITY_ENV}
    what = [spec.account_id, python, cwd, handler, spec.source_dir, sorted(base.items()), repr(view)]
    digest = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
    endpoint = spec.endpoint_id if _KEY_PART.match(spec.endpoint_id) else "ep"
    return Recipe(
        key=f"{endpoint}.r{spec.release}.{digest}",
        endpoint_id=spec.endpoint_id,
        release=spec.release,
        cwd=cwd,
        handler=handler,
        source_dir=os.path.abspath(spec.source_dir),
        env=base,
        python=python,
        view=view,
        bwrap=bwrap,
    )


class TemplatePool:
    """The templates of one local backend; thread-safe. `on_exit(worker_id, pid, code)` is told when a
    forked worker exits; `releases()` gives each live endpoint's current release."""

    def __init__(
        self,
        root: Path,
        *,
        max_templates: int,
        on_exit: Callable[[str, int, int], None],
        releases: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.root = root
        self.max_templates = max(0, max_templates)
        self._on_exit = on_exit
        self._releases = releases
        self._live: OrderedDict[str, TemplateProcess] = OrderedDict()  # least recently used first
        self._learning: dict[str, tuple[Recipe, Path]] = {}  # worker id -> (its recipe, its report)
        self._failed_starts: dict[str, int] = {}  # key -> templates that died before they were ready
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._closed = False
        if self.max_templates:
            root.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.max_templates > 0 and not self._closed

    def unfit(self, key: str) -> str | None:
        try:
            return (self.root / key / "unfit").read_text()
        except OSError:
            return None

    def _learned(self, key: str) -> bool:
        return (self.root / key / "modules").is_file()

    # -- launch path ------------------------------------------------------------------------------

    def fork(self, recipe: Recipe, worker_id: str, env: dict[str, str], log_path: Path) -> Forked | None:
        """The worker forked from its release's ready template, or None: start it plainly. Retires the
        endpoint's templates of other keys, and starts this key's template (in the background) when
        its modules are known and it does not run."""
        if not self.enabled or self.unfit(recipe.key) is not None:
            return None
        with self._lock:
            for other in list(self._live.values()):
                if other.recipe.endpoint_id == recipe.endpoint_id and other.recipe.key != recipe.key:
                    self._retire_locked(other, "superseded", drop_dir=True)
            template = self._live.get(recipe.key)
            if template is not None:
                self._live.move_to_end(recipe.key)
        if template is None:
            self._maybe_start(recipe)
            return None
        if template.state != "ready":
            return None
        began = time.monotonic()
        try:
            forked, exited = template.fork(worker_id, env, log_path)
        except Unfit as exc:
            self._mark_unfit(recipe.key, str(exc))
            self._retire(template, "unfit")
            return None
        except Failed as exc:
            log.warning("template_failed key=%s worker_id=%s why=%s", recipe.key, worker_id, exc)
            note(log_path, f"[ember] template unavailable ({exc}): starting afresh")
            self._retire(template, "failed")
            self._maybe_start(recipe)  # a fresh one for the next cold start
            return None
        if exited is not None:
            self._on_exit(worker_id, forked.pid, exited)
        ms = (time.monotonic() - began) * 1000
        log.info("worker_forked key=%s worker_id=%s pid=%s ms=%.1f", recipe.key, worker_id, forked.pid, ms)
        return forked

    def learning_fd(self, recipe: Recipe, worker_id: str) -> int | None:
        """A file for a plain start to report its modules into while its release's are not known (a
        few workers at a time per key: the first report wins); None otherwise. The caller passes it
        on and closes it."""
        if not self.enabled or self.unfit(recipe.key) is not None or self._learned(recipe.key):
            return None
        with self._lock:
            if sum(r.key == recipe.key for r, _ in self._learning.values()) >= _LEARNERS_MAX:
                return None
            directory = self.root / recipe.key
            directory.mkdir(parents=True, exist_ok=True)
            report = directory / f"report-{worker_id}"
            # The worker writes through this fd (a sandboxed one could not open the file itself).
            fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._learning[worker_id] = (recipe, report)
        return fd

    def forget(self, worker_id: str) -> None:
        """A worker's runtime state is gone: a report it never finished will not come."""
        with self._lock:
            learning = self._learning.pop(worker_id, None)
        if learning is not None:
            learning[1].unlink(missing_ok=True)

    # -- observe path -----------------------------------------------------------------------------

    def harvest(self) -> None:
        """Take the finished module reports (starting their templates) and retire the templates of
        releases no longer current. Cheap: a stat per learning worker."""
        with self._lock:
            learning = list(self._learning.items())
        for worker_id, (recipe, report) in learning:
            names = None if self._learned(recipe.key) else _read_report(report)
            if names is not None:
                write_atomic(self.root / recipe.key / "modules", "\n".join(names) + "\n")
                log.info("template_learned key=%s modules=%d", recipe.key, len(names))
            if self._learned(recipe.key):  # from this report or another's: the others are not needed
                with self._lock:
                    self._learning.pop(worker_id, None)
                report.unlink(missing_ok=True)
                self._maybe_start(recipe)
        if self._releases is not None and time.monotonic() - self._checked_at >= _RELEASE_CHECK_S:
            self._checked_at = time.monotonic()
            self._retire_gone()

    def _retire_gone(self) -> None:
        try:
            current = dict(self._releases()) if self._releases is not None else {}
        except Exception as exc:  # a store hiccup must not break observe; the next check retries
            log.warning("template_release_check_failed error=%s", exc)
            return
        with self._lock:
            for template in list(self._live.values()):
                if current.get(template.recipe.endpoint_id) != template.recipe.release:
                    self._retire_locked(template, "release gone", drop_dir=True)
            keep = set(self._live) | {recipe.key for recipe, _ in self._learning.values()}
        for directory in self.root.iterdir() if self.root.is_dir() else ():
            endpoint, _, rest = directory.name.partition(".r")
            release = rest.partition(".")[0]
            if directory.name in keep or not release.isdigit() or current.get(endpoint) == int(release):
                continue
            if not _running(directory):
                shutil.rmtree(directory, ignore_errors=True)

    # -- starting and retiring --------------------------------------------------------------------

    def _maybe_start(self, recipe: Recipe) -> None:
        if not self.enabled or not self._learned(recipe.key) or self.unfit(recipe.key) is not None:
            return
        with self._lock:
            if recipe.key in self._live:
                return
            while len(self._live) >= self.max_templates:
                self._retire_locked(next(iter(self._live.values())), "least recently used")
            template = TemplateProcess(recipe, self.root / recipe.key)
            self._live[recipe.key] = template
        name = f"ember-template-{recipe.key}"
        threading.Thread(target=self._run, args=(template,), name=name, daemon=True).start()

    def _run(self, template: TemplateProcess) -> None:
        """A template's thread: start it, then relay its workers' exits until it exits."""
        key = template.recipe.key
        try:
            try:
                template.start()
            except Failed as exc:
                self._failed_starts[key] = self._failed_starts.get(key, 0) + 1
                if self._failed_starts[key] >= _START_FAILURES_MAX:  # not a passing accident
                    self._mark_unfit(key, f"{exc}, {_START_FAILURES_MAX} times in a row")
                raise
            self._failed_starts.pop(key, None)
            log.info("template_ready key=%s pid=%s", key, template.pid)
            template.relay(self._on_exit)
        except Unfit as exc:
            self._mark_unfit(key, str(exc))
        except Exception as exc:  # the template is dropped; plain starts go on
            log.warning("template_failed key=%s error=%s", key, exc)
        finally:
            with self._lock:
                if self._live.get(key) is template:
                    del self._live[key]
            template.finish()
            if template.drop_dir:
                shutil.rmtree(template.directory, ignore_errors=True)

    def _retire(self, template: TemplateProcess, why: str) -> None:
        with self._lock:
            self._retire_locked(template, why)

    def _retire_locked(self, template: TemplateProcess, why: str, drop_dir: bool = False) -> None:
        if self._live.get(template.recipe.key) is template:
            del self._live[template.recipe.key]
        template.drop_dir = template.drop_dir or drop_dir
        if template.retire():
            log.info("template_retired key=%s why=%s", template.recipe.key, why)

    def _mark_unfit(self, key: str, why: str) -> None:
        log.warning("template_unfit key=%s why=%s: its workers start plainly", key, why)
        if (self.root / key).is_dir():
            write_atomic(self.root / key / "unfit", why)

    def close(self) -> None:
        """Server shutdown: every template forks no more and exits once its workers have."""
        with self._lock:
            self._closed = True
            for template in list(self._live.values()):
                self._retire_locked(template, "shutdown")


def _read_report(report: Path) -> list[str] | None:
    """The module names of a finished report; None while it is unfinished (or never will be)."""
    try:
        size = report.stat().st_size
        if size == 0 or size > _REPORT_MAX_BYTES:
            return None
        data = report.read_bytes()
    except OSError:
        return None
    if not data.endswith(_END):
        return None
    names = [n for n in data[: -len(_END)].decode("utf-8", "replace").split("\n") if _MODULE.match(n)]
    return names[:_MODULES_MAX]


def _running(directory: Path) -> bool:
    """Whether the template process recorded in `directory` (maybe another instance's) still runs."""
    try:
        info = json.loads((directory / "meta.json").read_text())
        pid = int(info.get("outer_pid") or 0)
    except (OSError, ValueError, TypeError):
        return False
    return pid > 0 and info.get("state") != "exited" and proc_start_ticks(pid) is not None
