"""Content-addressed snapshots of a handler directory, so that a deploy freezes what runs and an
unchanged directory keeps its release."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ember.core.errors import InvalidInput, Problem
from ember.core.specs import handler_problems, normalise_handler
from ember.fsmodes import readable_tree

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
# Where a directory's handler is looked for, in order: Ember's and `ember init`'s name, then the names
# RunPod's worker templates use (`rp_handler.py`, and `src/` for images built with `ADD src .`).
HANDLER_CANDIDATES = ("handler.py", "rp_handler.py", "src/handler.py", "src/rp_handler.py")


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


def find_handler(source_dir: str | Path, handler: str | None = None, *, label: str | None = None) -> str:
    """The handler file of a source directory, relative to it (`/` separated): `handler` when given
    (checked: a relative path without `..` to a file that a snapshot keeps), else the first of
    HANDLER_CANDIDATES that exists. Messages name the directory as `label` when given (an upload's
    id, where the server's own path is nobody's business).

    Raises InvalidInput naming the problem: a missing directory, a bad or missing `handler`, or a
    directory with none of the candidates."""
    src = Path(source_dir).expanduser()
    shown = label or str(source_dir)
    if not src.is_dir():
        what = "is not a directory" if src.exists() else "does not exist"
        raise InvalidInput(
            f"source directory {str(source_dir)!r} {what}",
            [Problem("sourceDir", what.replace("is ", "", 1), str(source_dir))],
        )
    if handler is None:
        for candidate in HANDLER_CANDIDATES:
            if (src / candidate).is_file():
                return candidate
        raise InvalidInput(
            f"{shown!r} has no handler: looked for {', '.join(HANDLER_CANDIDATES)}",
            [Problem("handler", "no handler file found", shown)],
        )
    rel = normalise_handler(handler)
    problems = handler_problems(rel)
    if problems:
        raise InvalidInput(f"handler {handler!r} {problems[0].message}", problems)
    path = src / rel
    skipped = [part for part in Path(rel).parts[:-1] if part in SKIP_DIRS]
    if skipped:
        raise InvalidInput(
            f"handler {handler!r} is inside {skipped[0]}/, which a deploy leaves out",
            [Problem("handler", f"is inside {skipped[0]}/, which a deploy leaves out", handler)],
        )
    if not path.is_file() or not path.resolve().is_relative_to(src.resolve()):
        raise InvalidInput(
            f"handler {handler!r} is not a file in {shown!r}",
            [Problem("handler", "no such file in the source directory", handler)],
        )
    return rel


def snapshot(
    source_dir: str, root: Path, handler: str | None = None, *, label: str | None = None
) -> tuple[str, Path, str]:
    """Copy `source_dir` to `root/<digest>` (once per content) and return (digest, snapshot path,
    handler file), the handler as `find_handler` chooses it (`label` names the directory in errors).

    Raises InvalidInput when the directory is missing or has no such handler (see `find_handler`)."""
    src = Path(source_dir).expanduser()
    chosen = find_handler(src, handler, label=label)
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
        readable_tree(tmp)  # a sandboxed worker runs it as a uid of its own
        try:
            tmp.rename(dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another deploy of the same content won the race
    return digest, dest, chosen
