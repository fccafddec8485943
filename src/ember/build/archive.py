"""Source archives: how a directory travels to the server when its owner may not name a host path.

`pack` (the CLI's side) makes a gzip'd tar of a directory as a snapshot sees it (`build.source`:
SKIP_DIRS and `.pyc` files left out, links to files followed, links to directories left out), less
what its `.gitignore` files and `.emberignore` ignore.

`unpack` (the server's side) reads every member header first and refuses the whole archive, writing
nothing, when one member is not plainly a file or directory inside it: an absolute name, a `..`
component, a device or FIFO, a name twice, a path through a file, a link that points outside or at
an absolute path. Links that stay inside are written as copies of the file they name (a link to a
directory or to nothing is left out, as a snapshot leaves it out), so the unpacked tree holds no
link at all and nothing later can follow one out of it. The tree is written in a temporary directory
beside its destination, with tarfile's `data` filter as a second guard, and renamed into place
whole; any failure removes it."""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tarfile
import tempfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pathspec

from ember.build.source import SKIP_DIRS
from ember.core.errors import InvalidInput, PayloadTooLarge, Problem

IGNORE_FILES = (".gitignore", ".emberignore")
MAX_LINK_HOPS = 8
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1024 * 1024
TAR_OVERHEAD_PER_MEMBER = 4096  # header blocks, padding, long-name records: what a tar adds per member


@dataclass(frozen=True)
class ArchiveLimits:
    compressed_bytes: int = 100 * 1024 * 1024
    unpacked_bytes: int = 500 * 1024 * 1024
    members: int = 20_000


@dataclass(frozen=True)
class Unpacked:
    files: int
    size: int  # bytes of file content written


# ---- packing (client side) ------------------------------------------------------------------------------
def _rebased(line: str, base: str) -> str:
    """A pattern line of `base/.gitignore` as a line of the root's: anchored patterns (a `/` before
    the end) get `base/` in front, the others match at any depth below `base`."""
    text = line.rstrip("\r\n")
    if not base or not text.strip() or text.startswith("#"):
        return text
    negated = text.startswith("!")
    body = text[1:] if negated else text
    anchored = "/" in body.rstrip("/")
    body = body.lstrip("/")
    return ("!" if negated else "") + (f"{base}/{body}" if anchored else f"{base}/**/{body}")


def _ignore_lines(directory: Path, base: str) -> list[str]:
    names = IGNORE_FILES if not base else IGNORE_FILES[:1]  # .emberignore is read at the root only
    lines: list[str] = []
    for name in names:
        path = directory / name
        if path.is_file():
            lines.extend(_rebased(line, base) for line in path.read_text(errors="replace").splitlines())
    return lines


def packed_files(root: Path) -> list[tuple[str, Path]]:
    """(name in the archive, path) of each file `pack` takes from `root`, in a stable order."""
    root = Path(root)
    lines: list[str] = []
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        base = here.relative_to(root).as_posix()
        base = "" if base == "." else base
        lines.extend(_ignore_lines(here, base))
        spec = pathspec.GitIgnoreSpec.from_lines(lines)
        prefix = f"{base}/" if base else ""
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_DIRS and not (here / d).is_symlink() and not spec.match_file(f"{prefix}{d}/")
        )
        for name in sorted(filenames):
            rel = prefix + name
            path = here / name
            if name.endswith(".pyc") or not path.is_file() or spec.match_file(rel):
                continue
            out.append((rel, path))
    return sorted(out)


def pack(root: Path) -> bytes:
    """A gzip'd tar of `root` (see the module docstring), owner and group left out."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", dereference=True) as tar:
        for rel, path in packed_files(root):
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if info.mode & 0o100 else 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


# ---- unpacking (server side) ----------------------------------------------------------------------------
def _refuse(member: str, message: str) -> InvalidInput:
    return InvalidInput(f"archive member {member!r} {message}", [Problem("archive", message, member)])


def _clean_name(raw: str) -> str:
    """The member's name without `./` and repeated slashes; refused when absolute or with `..`."""
    if raw.startswith("/"):
        raise _refuse(raw, "has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(raw, "has a '..' component")
    return "/".join(parts)


def _inside(link_dir: str, target: str, member: str) -> str:
    """Where a relative link target points, as a name in the archive; refused when outside."""
    if not target or target.startswith("/"):
        raise _refuse(member, f"is a link to an absolute path ({target!r})")
    joined = posixpath.normpath(posixpath.join(link_dir, target))
    if joined == ".." or joined.startswith("../"):
        raise _refuse(member, f"is a link that points outside the archive ({target!r})")
    return "" if joined == "." else joined


@dataclass
class _Plan:
    dirs: list[tarfile.TarInfo]
    files: list[tarfile.TarInfo]
    links: dict[str, str]  # link name -> the archive name it points at (inside)
    size: int


def _plan(tar: tarfile.TarFile, limits: ArchiveLimits) -> _Plan:
    plan = _Plan([], [], {}, 0)
    kinds: dict[str, str] = {}
    count = 0
    while True:
        member = tar.next()
        if member is None:
            break
        count += 1
        if count > limits.members:
            raise PayloadTooLarge(f"the archive has more than {limits.members} members")
        name = _clean_name(member.name)
        if not name:
            if member.isdir():
                continue  # the archive's own root, "./"
            raise _refuse(member.name, "has no name")
        if name in kinds:
            raise _refuse(member.name, "appears twice")
        if member.isdir():
            kinds[name] = "dir"
            plan.dirs.append(member)
        elif member.isfile():
            plan.size += member.size
            if plan.size > limits.unpacked_bytes:
                raise PayloadTooLarge(f"the archive unpacks to more than {limits.unpacked_bytes} bytes")
            kinds[name] = "file"
            plan.files.append(member)
        elif member.issym():
            kinds[name] = "link"
            plan.links[name] = _inside(posixpath.dirname(name), member.linkname, member.name)
        elif member.islnk():
            if member.linkname.startswith("/"):
                raise _refuse(member.name, f"is a link to an absolute path ({member.linkname!r})")
            target = _inside("", member.linkname, member.name)
            if kinds.get(target) != "file":
                raise _refuse(member.name, "is a hard link to no earlier file of the archive")
            kinds[name] = "link"
            plan.links[name] = target
        else:
            raise _refuse(member.name, "is a device, FIFO or other special file")
        member.name = name
    for name in kinds:
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if kinds.get(parent, "dir") != "dir":
                raise _refuse(name, f"is inside {parent!r}, which is not a directory")
    return plan


def _link_target(plan: _Plan, name: str, kinds: dict[str, str]) -> str | None:
    """The regular file a link leads to (through other links), or None (a directory, nothing, a loop)."""
    for _ in range(MAX_LINK_HOPS):
        name = plan.links[name]
        kind = kinds.get(name)
        if kind == "file":
            return name
        if kind != "link":
            return None
    return None


def _plain_tar(data: bytes, spool: IO[bytes], limits: ArchiveLimits) -> None:
    """Write the tar that `data` is (as is, or gunzipped) to `spool`, decompressing no further than
    the unpacked limit allows (tar headers included), so that a small bomb stays small."""
    if data[:2] != GZIP_MAGIC:
        spool.write(data)
        return
    bound = limits.unpacked_bytes + TAR_OVERHEAD_PER_MEMBER * limits.members + 1024 * 1024
    written = 0
    rest = data
    try:
        while rest[:2] == GZIP_MAGIC:  # one gzip member after another, as gzip itself reads them
            unzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            chunk = unzip.decompress(rest, CHUNK)
            while True:
                written += len(chunk)
                if written > bound:
                    raise PayloadTooLarge(f"the archive unpacks to more than {limits.unpacked_bytes} bytes")
                spool.write(chunk)
                if unzip.eof or not unzip.unconsumed_tail:
                    break
                chunk = unzip.decompress(unzip.unconsumed_tail, CHUNK)
            if not unzip.eof:
                raise zlib.error("the gzip stream ends early")
            rest = unzip.unused_data
    except zlib.error as exc:
        raise InvalidInput(
            f"the body is not a valid gzip stream ({exc})", [Problem("archive", "damaged gzip stream")]
        ) from None


def unpack(data: bytes, dest: Path, limits: ArchiveLimits) -> Unpacked:
    """Unpack a tar or tar.gz into `dest` (which must not exist), whole or not at all.

    Raises InvalidInput naming the first refused member (nothing is written then), or saying the body
    is not an archive; PayloadTooLarge past `limits` (members or unpacked bytes)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=dest.parent) as spool:
        _plain_tar(data, spool, limits)
        spool.seek(0)
        try:
            tar = tarfile.open(fileobj=spool, mode="r:")  # noqa: SIM115 (closed by the `with` below)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InvalidInput(
                f"the body is not a tar or tar.gz archive ({exc})",
                [Problem("archive", "not a tar archive")],
            ) from None
        with tar:
            return _extract(tar, dest, limits)


def _extract(tar: tarfile.TarFile, dest: Path, limits: ArchiveLimits) -> Unpacked:
    try:
        plan = _plan(tar, limits)
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidInput(f"the archive is damaged ({exc})", [Problem("archive", "damaged")]) from None
    kinds = {m.name: "dir" for m in plan.dirs} | {m.name: "file" for m in plan.files}
    kinds |= {name: "link" for name in plan.links}
    copies = {name: target for name in plan.links if (target := _link_target(plan, name, kinds))}
    sizes = {m.name: m.size for m in plan.files}
    size = plan.size + sum(sizes[target] for target in copies.values())
    if size > limits.unpacked_bytes:
        raise PayloadTooLarge(f"the archive unpacks to more than {limits.unpacked_bytes} bytes")
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.mkdir(mode=0o700)
        for member in [*plan.dirs, *plan.files]:
            tar.extract(member, tmp, set_attrs=member.isfile(), filter="data")
        for name, target in sorted(copies.items()):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tmp / target, tmp / name, follow_symlinks=False)
        tmp.rename(dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InvalidInput(
            f"the archive could not be unpacked ({exc})", [Problem("archive", "could not be unpacked")]
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Unpacked(files=len(plan.files) + len(copies), size=size)
