"""The local backend's sandbox: a worker (and its `exec`) inside bubblewrap, as an unprivileged user.

What a sandboxed worker sees (everything at its host path, so venv scripts, `.pth` files and the model
env stay valid, except the volume): the system trees (/usr, /bin, /lib*), a few files of /etc, the
Python install tree and the server's site-packages (ember's SDK, runpod) read-only, its release's
source and virtualenv read-only, the model cache read-only, its network volume read-write at
/runpod-volume, a private /tmp, a /proc of its own pid namespace, a minimal /dev plus the GPU devices
it was assigned. Nothing else of the host: not EMBER_HOME (the database, keys, logs, other workers'
state), not other sources or volumes. It has its own pid, mount and IPC namespaces; the network is the
host's (workers reach the control plane on loopback, and the outside world).

The user. When the server runs as root, bwrap runs as root (so it can bind trees that only root can
traverse, e.g. a Python under /root/.pyenv with /root at 0700; a bwrap run as the worker's user could
not resolve those paths), builds the view and then runs `setpriv` inside, which switches to the
account's own uid/gid (EMBER_SANDBOX_UID_BASE + a per-account index kept in `sandbox-uids.json`
beside the workers' state), clears the groups, drops every capability (and the bounding set) and sets
no_new_privs before the handler starts. The files a worker must read (sources, venvs, the model cache,
the Python tree) must therefore be readable by others (the default 0644/0755 modes); its volume is
chowned to its uid. When the server is not root, bwrap adds `--unshare-user` and the worker keeps the
server's uid: the filesystem view, pid and IPC isolation still hold, but a worker is not a separate
user then (file modes do not protect what is bound in, and nothing else is bound in).

Signals. The process Ember records (and signals as a process group) is the outer bwrap; inside it
bwrap's own pid 1 reaps, and the handler's python runs as pid 2. SIGTERM to the group must reach the
python (the SDK drains on it) without ending the sandbox first: the outer bwrap starts with SIGTERM
ignored (`env --ignore-signal=TERM`; bwrap does not forward signals and would otherwise die at once,
taking the sandbox with it), pid 1 of a pid namespace does not receive signals it has no handler for,
and the command inside resets SIGTERM to its default (`env --default-signal=TERM`) before it execs.
The python exits, pid 1 follows with its status, and so does the outer bwrap, whose exit code is the
worker's (143 for a SIGTERM without a handler, as unsandboxed). SIGKILL to the group kills pid 1 and
with it, by the kernel's rule for pid namespaces, every process inside, even ones that left the group.
`--die-with-parent` is deliberately not used: a worker outlives a control-plane restart and is
re-adopted from its pid file.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import site
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from shutil import which

from ember.core.errors import BackendError
from ember.core.sandbox import SandboxMode

VOLUME_PATH = "/runpod-volume"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = (
    "passwd", "group", "hosts", "hostname", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf",
    "localtime", "timezone", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates",
    "ca-certificates.conf", "pki", "alternatives", "mime.types", "protocols", "services", "os-release",
    "debian_version",
)  # fmt: skip
_GPU_CONTROL = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
# What the handler's process runs under once inside: no capabilities, no way to gain privileges.
_DROP = ["--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
UIDS_FILE = "sandbox-uids.json"


@dataclass(frozen=True)
class SandboxConfig:
    """How the local backend sandboxes workers. `hidden`: host paths never shown to a worker (the
    server's EMBER_HOME); `bwrap`: the tool's path, None when it is not installed."""

    mode: SandboxMode = SandboxMode.AUTO
    uid_base: int = 200_000
    uid_count: int = 100_000
    hidden: tuple[str, ...] = ()
    bwrap: str | None = field(default_factory=lambda: which("bwrap"))


@dataclass(frozen=True)
class View:
    """What one sandboxed process sees: host paths read-only at the same path, mounts (host path shown
    at another path), device files, its working directory, and the uid/gid it runs as (None: the
    server's)."""

    read_only: tuple[str, ...]
    mounts: tuple[tuple[str, str, bool], ...] = ()  # (host path, path inside, writable)
    devices: tuple[str, ...] = ()
    cwd: str = "/tmp"
    uid: int | None = None
    gid: int | None = None


def python_trees(python: str) -> list[str]:
    """What a worker's interpreter needs: the install trees (prefix and base prefix), the server's
    site-packages, wherever ember and runpod are imported from, and the worker's own venv."""
    paths = [sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, *site.getsitepackages()]
    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user_site:
        paths.append(user_site)
    for module in ("ember", "runpod"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            paths.append(str(Path(spec.origin).resolve().parent.parent))
    venv = Path(python).parent.parent
    if Path(python).is_absolute() and (venv / "pyvenv.cfg").is_file():
        paths.append(str(venv))
    return [p for p in paths if os.path.isabs(p) and os.path.isdir(p)]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def shown(paths: list[str], hidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    """`paths` normalised, without any that would show a hidden path (one equal to it, an ancestor of
    it, or inside it unless inside an `allowed` one), without repeats and paths inside an earlier one."""
    keep: list[str] = []
    for raw in sorted({os.path.abspath(p) for p in paths}):
        if any(_inside(h, raw) for h in hidden):
            continue  # "/" itself, or an ancestor of EMBER_HOME: would show all of it
        if any(_inside(raw, h) for h in hidden) and not any(_inside(raw, a) for a in allowed):
            continue
        if any(_inside(raw, k) for k in keep) or any(_inside(raw, s) for s in _SYSTEM_DIRS):
            continue
        keep.append(raw)
    return keep


def gpu_devices(indices: tuple[str, ...]) -> tuple[str, ...]:
    """The device files of the assigned GPUs (those that exist) and the driver's control devices."""
    if not indices:
        return ()
    wanted = [f"/dev/nvidia{i}" for i in indices if i.isdigit()] + [f"/dev/{n}" for n in _GPU_CONTROL]
    return tuple(d for d in wanted if os.path.exists(d))


def sandbox_argv(bwrap: str, view: View, command: list[str]) -> list[str]:
    """The full argv that runs `command` inside `view` (see the module docstring for the signals)."""
    argv = ["env", "--ignore-signal=TERM", bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-cgroup-try"]
    if os.geteuid() != 0:
        argv.append("--unshare-user")  # unprivileged: a user namespace is what lets bwrap mount at all
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm"]
    argv += ["--perms", "1777", "--tmpfs", "/tmp"]  # private, and writable by the worker's user
    for name in _ETC:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for device in view.devices:
        argv += ["--dev-bind", device, device]
    if view.devices:
        argv += ["--ro-bind", "/sys", "/sys"]  # the GPU driver and CUDA read the PCI topology
    targets = [*view.read_only, *(inside for _, inside, _ in view.mounts), view.cwd]
    for parent in _parents(targets, covered=list(view.read_only)):
        argv += ["--perms", "0755", "--dir", parent]  # bwrap would make them 0700, closed to the worker
    for path in view.read_only:
        argv += ["--ro-bind", path, path]
    for host, inside, writable in view.mounts:
        argv += ["--bind" if writable else "--ro-bind", host, inside]
    argv += ["--chdir", view.cwd, "--"]
    return argv + _as_worker(view) + ["env", "--default-signal=TERM", *command]


def _parents(targets: list[str], covered: list[str]) -> list[str]:
    """Directories to create (parents first) so every target's path exists and can be traversed."""
    out: list[str] = []
    for target in targets:
        parts = Path(target).parts
        for depth in range(2, len(parts)):
            parent = str(Path(*parts[:depth]))
            under = [*covered, *_SYSTEM_DIRS]
            if parent not in out and not any(_inside(parent, c) for c in under):
                out.append(parent)
    return sorted(out, key=lambda p: p.count("/"))


def _as_worker(view: View) -> list[str]:
    if view.uid is None:
        return ["setpriv", "--no-new-privs", "--"]
    ids = [f"--reuid={view.uid}", f"--regid={view.gid if view.gid is not None else view.uid}"]
    return ["setpriv", *ids, "--clear-groups", *_DROP, "--"]


def enter_argv(init_pid: int, view: View, command: list[str]) -> list[str]:
    """The argv that runs `command` inside a running sandbox (for `exec`).

    It joins the worker's own namespaces (nsenter: mount, pid, IPC, and the user namespace when the
    server is not root) rather than starting a fresh bwrap with the same binds, so that exec sees
    exactly what the worker sees, its /tmp, its processes in /proc, and then drops to the worker's
    uid with the same setpriv line. It can see nothing more: the mount namespace is the worker's.
    """
    argv = ["nsenter", f"--target={init_pid}", "--mount", "--pid", "--ipc"]
    if view.uid is None:
        argv += ["--user", "--preserve-credentials"]
    argv += ["--root", f"--wdns={view.cwd}", "--"]
    return argv + _as_worker(view) + list(command)


def init_pid(outer_pid: int, timeout_s: float = 5.0) -> int | None:
    """The sandbox's pid 1 as the host sees it (the outer bwrap's child), once the sandbox is set up
    (pid 1 has started the command); waits up to `timeout_s` for a sandbox that is starting. None when
    there is none."""
    deadline = time.monotonic() + timeout_s
    while True:
        init = _child_of(outer_pid)
        if init is not None and _child_of(init) is not None:
            return init
        if time.monotonic() >= deadline:
            return init
        time.sleep(0.02)


def _child_of(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    if children:
        return int(children[0])
    for entry in Path("/proc").iterdir():  # kernels without /proc/<pid>/task/<tid>/children
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                return int(entry.name)
    return None


class UidMap:
    """A stable uid per account for sandboxed workers: base + an index kept in a JSON file (under a
    lock, so control-plane instances sharing the directory agree), allocated on first use."""

    def __init__(self, directory: Path, base: int, count: int) -> None:
        self._path = directory / UIDS_FILE
        self._base, self._count = base, count

    def uid(self, account_id: str) -> int:
        with open(self._path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                known: dict[str, int] = json.loads(self._path.read_text())
            except FileNotFoundError:
                known = {}
            except (OSError, ValueError) as exc:
                raise BackendError(f"unreadable sandbox uid map {self._path}: {exc}")
            if account_id not in known:
                if len(known) >= self._count:
                    raise BackendError(f"no sandbox uid left: all {self._count} from {self._base} are used")
                known[account_id] = len(known)
                tmp = self._path.with_name(f".{self._path.name}.tmp")
                tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
                os.replace(tmp, self._path)
            return self._base + known[account_id]


def own_tree(path: str, uid: int, gid: int) -> None:
    """Make `path` (a volume) and, the first time, everything in it owned by `uid`:`gid`."""
    st = os.stat(path)
    if (st.st_uid, st.st_gid) == (uid, gid):
        return
    try:
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                os.lchown(os.path.join(root, name), uid, gid)
        os.chown(path, uid, gid)
    except OSError as exc:
        raise BackendError(f"cannot hand volume {path} to the worker's user {uid}: {exc}")
