"""The build loop: every release waiting in BUILDING is checked out from git, built, pushed to the
configured registry and made the serving release; a failed build is recorded (with its log) and the
previous release keeps serving. It never starts or stops workers: the lifecycle loop reacts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import shutil
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, TypeVar

from ember.build.docker_api import DockerClient
from ember.build.gitsource import checkout, mask_url
from ember.build.image import build_image, push_image
from ember.build.scaffold import VENDOR_DIR, vendor_sdk
from ember.control.clock import Clock
from ember.control.signals import Signals
from ember.core.errors import BuildError, EmberError
from ember.core.outbound import Network
from ember.core.specs import EndpointSpec, release_key, spec_from_json, spec_to_json
from ember.store.facade import Store
from ember.store.rows import ReleaseRow

log = logging.getLogger("ember.builder")
LOG_LINES_KEPT = 5000
LOG_FLUSH_S = 2.0
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")
T = TypeVar("T")

# Returns the engine's auth_config for pushing an image reference, or None.
AuthFn = Callable[[str], "dict[str, str] | None"]


@dataclass
class BuildConfig:
    home: Path  # checkouts live under <home>/builds/<endpoint id>/src
    registry: str | None = None  # HOST[:PORT]; None keeps images on the local engine only
    registry_auth: AuthFn | None = None
    client_factory: Callable[[], DockerClient] | None = None  # None = docker.from_env
    git_timeout_s: float = 600.0
    outbound_allow: tuple[Network, ...] = ()  # ranges git remotes may reach besides public addresses


class _Engine(TypedDict, total=False):
    """How `build_image` and `push_image` reach the engine: their own default unless configured."""

    client_factory: Callable[[], DockerClient]


@dataclass
class _Log:
    """A build's log lines, bounded; filled by the build thread, read by the loop to store progress."""

    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES_KEPT))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, line: str) -> None:
        with self.lock:
            self.lines.append(line.rstrip())

    def last(self) -> str:
        with self.lock:
            return self.lines[-1] if self.lines else ""

    def text(self) -> str:
        with self.lock:
            return "\n".join(self.lines)


def image_ref(registry: str | None, endpoint_id: str, number: int) -> str:
    """Where release `number` of an endpoint is pushed: `<registry>/ember/<endpoint id>:r<number>`."""
    repo = f"ember/{endpoint_id.lower()}:r{number}"
    return f"{registry.rstrip('/')}/{repo}" if registry else repo


def _inside(root: Path, relative: str, what: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BuildError(f"the {what} {relative!r} points outside the repository")
    return path


def _in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run `fn` in a daemon thread (not the default executor, which a shutdown would wait on for the
    whole build); the future carries its result or exception."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def succeed(value: T) -> None:
        if not future.done():
            future.set_result(value)

    def fail(exc: BaseException) -> None:
        if not future.done():
            future.set_exception(exc)

    def target() -> None:
        settle: Callable[[], None]
        try:
            settle = functools.partial(succeed, fn())
        except BaseException as exc:  # handed over to the awaiting coroutine
            settle = functools.partial(fail, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class Builder:
    """Builds releases one at a time, oldest first. `tick()` is the loop body (the runner calls it when
    `signals.builds` is set, and every tick); it returns once nothing waits."""

    def __init__(self, store: Store, clock: Clock, signals: Signals, cfg: BuildConfig) -> None:
        self.store = store
        self.clock = clock
        self.signals = signals
        self.cfg = cfg

    async def tick(self) -> None:
        for _ in range(100):  # bounded: each pass builds one release
            waiting = await self.store.run(self.store.endpoints.building)
            if not waiting:
                return
            await self.build(waiting[0])

    async def build(self, release: ReleaseRow) -> None:
        """Build one release row and record the outcome (never raises for a failed build)."""
        endpoint_id, number = release["endpoint_id"], int(release["number"])
        spec = spec_from_json(release["spec"])
        out = _Log()
        log.info("build_started endpoint=%s release=%d", endpoint_id, number)
        try:
            if not spec.git:
                raise BuildError("this release has no git source to build")
            local = await self._owned_by_admin(endpoint_id)
            work = _in_daemon_thread(
                lambda: self._build_blocking(endpoint_id, number, spec, out, local),
                f"ember-build-{endpoint_id}",
            )
            while not work.done():
                await asyncio.wait({work}, timeout=LOG_FLUSH_S)
                await self.store.run(self.store.endpoints.set_release_log, endpoint_id, number, out.text())
            ref, commit = work.result()
        except EmberError as exc:
            await self._failed(endpoint_id, number, spec, out, exc)
            return
        except Exception as exc:  # a bug or an unexpected library error must not stop the loop for good
            log.exception("build_crashed endpoint=%s release=%d", endpoint_id, number)
            await self._failed(endpoint_id, number, spec, out, BuildError(f"internal error: {exc!r}"))
            return
        await self._succeeded(endpoint_id, number, spec, out, ref, commit)

    async def _owned_by_admin(self, endpoint_id: str) -> bool:
        """Whether the endpoint's account is the admin's: only the admin's git sources may be local
        (`file://`, a path on this machine)."""
        ep = await self.store.run(lambda: self.store.endpoints.get(endpoint_id, include_deleted=True))
        owner = await self.store.run(self.store.accounts.get, ep["account_id"]) if ep is not None else None
        return bool(owner is not None and owner["is_admin"])

    # ---- the blocking part (a worker thread) ---------------------------------------------------------
    def _build_blocking(
        self, endpoint_id: str, number: int, spec: EndpointSpec, out: _Log, local: bool
    ) -> tuple[str, str]:
        git = spec.git or {}
        url, branch = str(git["url"]), str(git.get("branch") or "main")
        root = self.cfg.home / "builds" / _SAFE_ID.sub("_", endpoint_id) / "src"
        out.add(f"==> checking out {mask_url(url)} branch {branch}")
        if root.exists() and not (root / ".git").exists():
            shutil.rmtree(root)  # a clone cut short (e.g. by a crash of the control plane)
        commit = checkout(
            url, branch, root, allow=self.cfg.outbound_allow, local=local, timeout_s=self.cfg.git_timeout_s
        )
        out.add(f"    commit {commit}")
        root = root.resolve()
        context = _inside(root, str(git.get("context") or "."), "build context")
        if not context.is_dir():
            raise BuildError(f"the build context {git.get('context')!r} is not a directory of the repository")
        dockerfile = self._dockerfile(root, context, str(git.get("dockerfile") or "Dockerfile"))
        if not (context / VENDOR_DIR).exists():
            vendor_sdk(context)
            out.add(f"==> vendored Ember's worker SDK into {VENDOR_DIR}/ (the repository has none)")
        ref = image_ref(self.cfg.registry, endpoint_id, number)
        out.add(f"==> building {ref} (Dockerfile {dockerfile})")
        factory: _Engine = {}
        if self.cfg.client_factory is not None:
            factory["client_factory"] = self.cfg.client_factory
        report = build_image(context, ref, dockerfile=dockerfile, on_log=out.add, **factory)
        for line in report.lines():
            out.add(line)
        if self.cfg.registry:
            out.add(f"==> pushing {ref}")
            auth = self.cfg.registry_auth(ref) if self.cfg.registry_auth else None
            digest = push_image(ref, auth=auth, on_log=out.add, **factory)
            out.add(f"    pushed {ref}@{digest}")
        else:
            out.add(
                "==> no registry is configured (--registry / EMBER_REGISTRY): the image stays on this engine"
            )
        return ref, commit

    @staticmethod
    def _dockerfile(root: Path, context: Path, dockerfile: str) -> str:
        """The Dockerfile's path relative to the context; `dockerfile` is relative to the repository
        root, or else to the context."""
        for base in (root, context):
            path = (base / dockerfile).resolve()
            if not path.is_relative_to(root):
                raise BuildError(f"the Dockerfile path {dockerfile!r} points outside the repository")
            if path.is_file():
                if not path.is_relative_to(context):
                    raise BuildError(f"the Dockerfile {dockerfile!r} is outside the build context")
                return str(path.relative_to(context))
        raise BuildError(f"no Dockerfile at {dockerfile!r} in the repository")

    # ---- outcomes ------------------------------------------------------------------------------------
    async def _succeeded(
        self, endpoint_id: str, number: int, spec: EndpointSpec, out: _Log, ref: str, commit: str
    ) -> None:
        s = self.store
        built = spec.with_changes(image_name=ref)
        await s.run(
            lambda: s.endpoints.finish_release(
                endpoint_id,
                number,
                status="READY",
                log=out.text(),
                image=ref,
                commit=commit,
                spec_json=spec_to_json(built),
            )
        )
        ep = await s.run(s.endpoints.get, endpoint_id)
        if ep is None:
            return
        if number <= ep["release"]:  # a newer release already serves (e.g. after a rollback)
            log.info("build_ready endpoint=%s release=%d serving=%d", endpoint_id, number, ep["release"])
            return
        current = spec_from_json(ep["spec"])
        # Scaling settings stay as they are now; what runs becomes the built release.
        serving = built.with_changes(scaling=current.scaling, name=current.name)
        await s.run(
            lambda: s.endpoints.set_release(
                endpoint_id, number, spec_to_json(serving), release_key(serving), self.clock.now()
            )
        )
        if (ep["status_message"] or "").startswith("build of release"):
            await s.run(s.endpoints.set_status, endpoint_id, "")
        log.info("build_ready endpoint=%s release=%d image=%s commit=%s", endpoint_id, number, ref, commit)
        self.signals.poke_scaler()

    async def _failed(
        self, endpoint_id: str, number: int, spec: EndpointSpec, out: _Log, exc: EmberError
    ) -> None:
        s = self.store
        tail = getattr(exc, "log_tail", "")
        if tail and tail.splitlines()[-1] != out.last():
            out.add(tail)
        out.add(f"==> build failed: {exc.message}")
        await s.run(lambda: s.endpoints.finish_release(endpoint_id, number, status="FAILED", log=out.text()))
        ep = await s.run(s.endpoints.get, endpoint_id)
        serving = ep["release"] if ep is not None else 0
        keeps = f"release {serving} keeps serving" if serving else "nothing is serving yet"
        await s.run(
            s.endpoints.set_status, endpoint_id, f"build of release {number} failed: {exc.message}; {keeps}"
        )
        log.warning("build_failed endpoint=%s release=%d error=%s", endpoint_id, number, exc.message)
