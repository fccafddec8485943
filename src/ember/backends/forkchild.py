"""What a child forked from a FlashBoot template (`ember.backends.forkserver`) does to become a worker
that looks, from inside and from the host, like a plain start: in the sandbox, namespaces of its own
(user, mount, IPC: a fresh /tmp and /dev/shm) and no privileges; everywhere, its own environment and
command line in /proc. Standard library only: it runs in the worker's interpreter."""

from __future__ import annotations

import ctypes
import os
import re

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND = 0x1, 0x2, 0x4, 0x20, 0x1000
_MS_REC, _MS_PRIVATE = 0x4000, 0x40000
_PR_SET_DUMPABLE, _PR_CAPBSET_DROP = 4, 24
_CAP_VERSION_3 = 0x20080522
_PR_SET_MM, _PR_SET_MM_MAP = 35, 14
_MM_FIELDS = (
    "start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack", "arg_start",
    "arg_end", "env_start", "env_end",
)  # fmt: skip
_KEPT: list[
    ctypes.Array[ctypes.c_char]
] = []  # the buffers the kernel reads this process's environment and argv from
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded once, in the template, before any fork
_LIBC.sbrk.restype = ctypes.c_void_p


def isolate_namespaces() -> None:
    """Private user, mount and IPC namespaces with a fresh /tmp and /dev/shm, as a sandboxed plain
    worker gets from bubblewrap (what the sandbox binds below them is bound again: a source under
    /tmp stays visible); then no capabilities, and not dumpable (so sibling workers of the same uid
    cannot read its environment or memory). Raises OSError when the host does not allow it."""
    libc = _LIBC

    def check(result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWIPC), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "private mounts")
    roots = ("/tmp", "/dev/shm")
    kept = [(path, ro, os.open(path, os.O_PATH)) for path, ro in _mounts_under(roots)]
    for root in roots:
        check(libc.mount(b"tmpfs", root.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=1777"), "tmpfs")
    # What leads to a mount below them is a skeleton of directories the worker cannot change (bwrap
    # makes them root's): a small tmpfs per top directory, made read-only once the binds are in.
    tops = sorted({_top(path, roots) for path, _ro, _fd in kept} - {path for path, _ro, _fd in kept})
    for top in tops:
        os.mkdir(top, 0o755)
        check(libc.mount(b"tmpfs", top.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=0755"), top)
    for path, read_only, fd in kept:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, 0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            open(path, "a").close()
        check(libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, _MS_BIND | _MS_REC, None), path)
        if read_only:
            flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
            libc.mount(
                None, path.encode(), None, flags, None
            )  # already read-only where the sandbox locked it
        os.close(fd)
    for top in tops:
        flags = _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
        check(libc.mount(None, top.encode(), None, flags, None), f"read-only {top}")
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    check(libc.capset(header, data), "capset")
    check(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "not dumpable")


def _top(path: str, roots: tuple[str, ...]) -> str:
    """The directory right below one of `roots` that `path` lies in (or is)."""
    root = next(r for r in roots if path.startswith(r + "/"))
    return root + "/" + path[len(root) + 1 :].split("/")[0]


def _mounts_under(roots: tuple[str, ...]) -> list[tuple[str, bool]]:
    """The mount points strictly below `roots` (outermost only: a recursive bind takes the rest along),
    each with whether it is read-only, from /proc/self/mountinfo."""
    found: list[tuple[str, bool]] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            path = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if any(path.startswith(root + "/") for root in roots):
                found.append((path, "ro" in fields[5].split(",")))
    found.sort(key=lambda item: item[0].count("/"))
    outer: list[tuple[str, bool]] = []
    for path, read_only in found:
        if not any(path.startswith(p + "/") or path == p for p, _ in outer):
            outer.append((path, read_only))
    return outer


class _MmMap(ctypes.Structure):
    """struct prctl_mm_map (linux/prctl.h)."""

    _fields_ = [
        *((name, ctypes.c_uint64) for name in _MM_FIELDS),
        ("auxv", ctypes.c_void_p),
        ("auxv_size", ctypes.c_uint32),
        ("exe_fd", ctypes.c_uint32),
    ]


def show_identity(env: dict[str, str], argv: list[str]) -> None:
    """Point this process's environment and command line, as /proc/<pid>/environ and cmdline show
    them (what `exec`, `ps` and operators read), at the worker's own instead of the template's, with
    prctl(PR_SET_MM_MAP) (no privilege needed, the kernel checks the addresses). Skipped where the
    kernel lacks it: then /proc shows the template's, and `exec` uses the backend's copy."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        fields = [int(x) for x in stat[stat.rfind(")") + 2 :].split()[23:49]]
    except (OSError, ValueError):
        return
    at = dict(zip(("start_code", "end_code", "start_stack"), fields[0:3], strict=True))
    keys = ("start_data", "end_data", "start_brk", "arg_start", "arg_end", "env_start", "env_end")
    at.update(zip(keys, fields[19:26], strict=True))
    libc = _LIBC
    at["brk"] = libc.sbrk(0) or at["start_brk"]
    for kind, blob in (("env", b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())),
                       ("arg", b"".join(a.encode() + b"\0" for a in argv))):  # fmt: skip
        buf = ctypes.create_string_buffer(blob, len(blob))
        _KEPT.append(buf)  # the kernel reads it from now on: never freed
        at[f"{kind}_start"], at[f"{kind}_end"] = ctypes.addressof(buf), ctypes.addressof(buf) + len(blob)
    mm = _MmMap(*(at[name] for name in _MM_FIELDS), None, 0, 0xFFFFFFFF)
    libc.prctl(_PR_SET_MM, _PR_SET_MM_MAP, ctypes.byref(mm), ctypes.sizeof(mm), 0)


def become_environment(env: dict[str, str]) -> None:
    """Make `os.environ` (and the C environment) exactly `env`, changing only what differs (the
    template's is the worker's less its identity, so that is a few variables)."""
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
