"""Content-addressed snapshots of a handler directory, so that a deploy freezes what runs and an
unchanged directory keeps its release."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ember.core.errors import InvalidInput, Problem

SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "node_modules",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
}
MAX_SOURCE_BYTES = 512 * 1024 * 1024


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".pyc"):
                continue
            out.append(Path(dirpath) / name)
    return out


def digest_dir(root: Path) -> str:
    h = hashlib.sha256()
    total = 0
    for path in _files(root):
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        total += len(data)
        if total > MAX_SOURCE_BYTES:
            raise InvalidInput(
                f"source directory {root} is larger than {MAX_SOURCE_BYTES} bytes",
                [Problem("sourceDir", "too large", str(root))],
            )
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:24]


def snapshot(source_dir: str, root: Path) -> tuple[str, Path]:
    """Copy `source_dir` to `root/<digest>` (once per content) and return (digest, snapshot path).

    Raises InvalidInput when the directory is missing or has no handler.py."""
    src = Path(source_dir).expanduser()
    if not src.is_dir():
        raise InvalidInput(
            f"source directory {source_dir!r} does not exist on the server",
            [Problem("sourceDir", "no such directory", source_dir)],
        )
    if not (src / "handler.py").is_file():
        raise InvalidInput(
            f"{source_dir!r} has no handler.py", [Problem("sourceDir", "no handler.py", source_dir)]
        )
    digest = digest_dir(src)
    dest = root / digest
    if not dest.exists():
        tmp = root / f".{digest}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        for path in _files(src):
            target = tmp / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        try:
            tmp.rename(dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another deploy of the same content won the race
    return digest, dest
