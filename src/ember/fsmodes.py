"""File modes under EMBER_HOME: private to the server's user, except what sandboxed workers read.

The server runs with umask 077 (`PRIVATE_UMASK`, set by the entry points `ember server`, `ember up`
and `ember dev`), so what it creates is its own: the database and its -wal/-shm, keys, credentials,
worker logs, build checkouts. `make_private` creates EMBER_HOME 0700, or tightens one an older version
left 0755 with 0644 files. No other host user can then reach anything inside.

A sandboxed worker runs as a uid of its own and is shown (bind-mounted, never by its path through the
home) its release's source, its virtualenv and the model cache, read-only. Those trees are the one
exception: `readable_tree` gives them read (never write) for other users once they are complete.
Volumes belong to their worker's uid (the local backend chowns them).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
# Trees under EMBER_HOME whose modes serve the workers: read by them (sources, venvs, models) or owned
# by their uid (volumes). `make_private` leaves what is inside them alone.
WORKER_READABLE = ("sources", "venvs", "models", "volumes")
_MAX_TIGHTEN = 100_000  # entries tightened per start: bounded even for a home full of files


def make_private(home: Path) -> None:
    """Create `home` with mode 0700 (or set it), and take group and other access away from what an
    earlier version created in it: files 0600-ish, directories 0700-ish (owner bits kept), except
    inside the WORKER_READABLE trees."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    seen = 0
    for dirpath, dirnames, filenames in os.walk(home):
        here = Path(dirpath)
        if here == home:
            dirnames[:] = [d for d in dirnames if d not in WORKER_READABLE]
        for name in [*dirnames, *filenames]:
            seen += 1
            if seen > _MAX_TIGHTEN:
                return
            _drop_group_other(here / name)


def _drop_group_other(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode) or not (mode & 0o077):
            return
        os.chmod(path, stat.S_IMODE(mode) & ~0o077)
    except OSError:
        pass  # gone meanwhile, or not ours: nothing to tighten


def readable_tree(root: Path) -> None:
    """Give other users read access (and traversal of directories, execution where the owner may
    execute) to everything under `root`, never write: for a tree a sandboxed worker reads."""
    for dirpath, dirnames, filenames in os.walk(root):
        make_readable(Path(dirpath))
        for name in [*dirnames, *filenames]:
            make_readable(Path(dirpath) / name)


def make_readable(path: Path) -> None:
    """Read (and traversal or execution, as for `readable_tree`) for other users on one path."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            return
        bits = stat.S_IMODE(mode)
        extra = 0o044 | (0o011 if stat.S_ISDIR(mode) or bits & 0o100 else 0)
        if bits & extra != extra:
            os.chmod(path, bits | extra)
    except OSError:
        pass
