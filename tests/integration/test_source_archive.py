"""Source archives on the real filesystem: what `pack` takes from a directory (.gitignore, .emberignore,
the directories a snapshot leaves out) and what `unpack` refuses, writing nothing anywhere."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from ember.build.archive import ArchiveLimits, pack, packed_files, unpack
from ember.build.uploads import Uploads
from ember.core.errors import InvalidInput, NotFound, PayloadTooLarge

LIMITS = ArchiveLimits(compressed_bytes=1024 * 1024, unpacked_bytes=64 * 1024, members=50)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _tar(*members: tuple[tarfile.TarInfo, bytes | None], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x = 1\n") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_pack_takes_what_git_would_less_the_emberignore_and_the_snapshot_s_skips(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "src",
        {
            "handler.py": "",
            "requirements.txt": "",
            ".gitignore": "*.log\n/build/\nsecret*\n!secret_ok.txt\n",
            ".emberignore": "data/\ntests/\n",
            "app.log": "",
            "build/x.py": "",
            "src/build/kept.py": "",  # /build/ is anchored at the root
            "secret.key": "",
            "secret_ok.txt": "",
            "data/big.bin": "",
            "tests/test_x.py": "",
            "src/handler.py": "",
            "src/.gitignore": "cache/\nlocal.txt\n",
            "src/cache/c.txt": "",
            "src/deep/local.txt": "",
            "src/deep/keep.txt": "",
            "mod.pyc": "",
            ".git/config": "",
            ".venv/bin/python": "",
            "__pycache__/m.cpython-311.pyc": "",
            "node_modules/x/index.js": "",
        },
    )
    (tmp_path / "outside.txt").write_text("outside\n")
    (src / "linked.txt").symlink_to(tmp_path / "outside.txt")  # a link to a file: its content goes
    (src / "linked_dir").symlink_to(src / "src")  # a link to a directory is left out, as snapshots do
    names = [name for name, _ in packed_files(src)]
    assert names == [
        ".emberignore",
        ".gitignore",
        "handler.py",
        "linked.txt",
        "requirements.txt",
        "secret_ok.txt",
        "src/.gitignore",
        "src/build/kept.py",
        "src/deep/keep.txt",
        "src/handler.py",
    ]
    out = tmp_path / "out"
    unpacked = unpack(pack(src), out, LIMITS)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == names
    assert unpacked.files == len(names)
    assert (out / "linked.txt").read_text() == "outside\n" and not (out / "linked.txt").is_symlink()


BAD = {
    "dotdot": ([_file("../x")], "'..'"),
    "dotdot-inside": ([_file("a/../../x")], "'..'"),
    "absolute": ([_file("/etc/x")], "absolute"),
    "link-to-root": ([_special("root", tarfile.SYMTYPE, "/")], "absolute"),
    "link-out": ([_special("up", tarfile.SYMTYPE, "../../etc")], "outside"),
    "link-out-deep": ([_special("a/b/up", tarfile.SYMTYPE, "../../../x")], "outside"),
    "hardlink-abs": ([_special("pw", tarfile.LNKTYPE, "/etc/passwd")], "absolute"),
    "hardlink-out": ([_special("pw", tarfile.LNKTYPE, "../x")], "'..'"),
    "hardlink-missing": ([_special("pw", tarfile.LNKTYPE, "nothing")], "hard link"),
    "char-device": ([_special("null", tarfile.CHRTYPE)], "device"),
    "block-device": ([_special("sda", tarfile.BLKTYPE)], "device"),
    "fifo": ([_special("pipe", tarfile.FIFOTYPE)], "FIFO"),
    "twice": ([_file("handler.py"), _file("handler.py")], "twice"),
    "through-a-file": ([_file("a"), _file("a/b")], "not a directory"),
    "through-a-link": ([_special("d", tarfile.SYMTYPE, "x"), _file("x/f"), _file("d/f")], "not a directory"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_member_refuses_the_whole_archive_and_writes_nothing(tmp_path: Path, case: str) -> None:
    members, message = BAD[case]
    root = tmp_path / "uploads"
    root.mkdir()
    (tmp_path / "sentinel").write_text("untouched")
    before = _everything(tmp_path)
    data = _tar(_file("handler.py"), *members)
    with pytest.raises(InvalidInput, match=message) as caught:
        unpack(data, root / "tree", LIMITS)
    assert type(caught.value) is InvalidInput and caught.value.problems[0].field == "archive"
    assert _everything(tmp_path) == before  # nothing in the destination, beside it or above it
    assert (tmp_path / "sentinel").read_text() == "untouched"
    assert not Path("/etc/x").exists()


def test_links_inside_become_copies_and_links_to_directories_or_nothing_are_left_out(tmp_path: Path) -> None:
    data = _tar(
        _file("src/handler.py", b"print(1)\n"),
        _special("handler.py", tarfile.SYMTYPE, "src/handler.py"),
        _special("again.py", tarfile.SYMTYPE, "handler.py"),  # a link to a link
        _special("hard.py", tarfile.LNKTYPE, "src/handler.py"),
        _special("srcdir", tarfile.SYMTYPE, "src"),
        _special("dangling", tarfile.SYMTYPE, "missing.txt"),
    )
    out = tmp_path / "tree"
    unpacked = unpack(data, out, LIMITS)
    for name in ("handler.py", "again.py", "hard.py"):
        assert (out / name).read_bytes() == b"print(1)\n" and not (out / name).is_symlink()
    assert not os.path.lexists(out / "srcdir") and not os.path.lexists(out / "dangling")
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert unpacked.files == 4 and unpacked.size == 4 * len(b"print(1)\n")


def test_limits_are_413s_and_a_gzip_bomb_is_not_unpacked(tmp_path: Path) -> None:
    big = _tar(_file("handler.py", b"\0" * (LIMITS.unpacked_bytes + 1)))
    many = _tar(*(_file(f"f{i}.py") for i in range(LIMITS.members + 1)))
    copies = _tar(
        _file("a.bin", b"\0" * (LIMITS.unpacked_bytes // 2)),
        *(_special(f"l{i}", tarfile.LNKTYPE, "a.bin") for i in range(3)),
    )
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))  # a tar header of zeros forever, compressed tiny
    for data in (big, many, copies, bomb):
        with pytest.raises(PayloadTooLarge):
            unpack(data, tmp_path / "tree", LIMITS)
        assert list(tmp_path.iterdir()) == []


def test_what_is_not_a_tar_is_a_400(tmp_path: Path) -> None:
    for data in (b"", b"hello", gzip.compress(b"hello")[:-4], b"\x1f\x8bnot gzip"):
        with pytest.raises(InvalidInput) as caught:
            unpack(data, tmp_path / "tree", LIMITS)
        assert type(caught.value) is InvalidInput
        assert list(tmp_path.iterdir()) == []


def test_an_upload_belongs_to_its_account(tmp_path: Path) -> None:
    uploads = Uploads(tmp_path / "uploads", LIMITS)
    src = _write(tmp_path / "src", {"handler.py": "def handler(job):\n    return 1\n"})
    saved = uploads.save("src-abc", "acct-a", pack(src), 1.0)
    assert (saved.files, saved.tree) == (1, tmp_path / "uploads" / "src-abc" / "tree")
    assert uploads.get("src-abc", "acct-a") == saved
    for source_id, account in [("src-abc", "acct-b"), ("src-nope", "acct-a"), ("../src-abc", "acct-a")]:
        with pytest.raises(NotFound):
            uploads.get(source_id, account)
    with pytest.raises(InvalidInput):
        uploads.save("src-bad", "acct-a", _tar(_file("../x")), 2.0)
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == ["src-abc"]
