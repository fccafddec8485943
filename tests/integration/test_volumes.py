"""Network volumes on this host: lifecycle, growth only, restarts, and a hard size limit where enforceable."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from ember.core.errors import Conflict, InvalidInput, NotFound
from ember.volumes.store import VolumeManager, enforcement_unavailable_reason
from tests.conftest import need

UNIT_BYTES = 16 * 1024 * 1024  # one "GB" of these tests' volumes, so that filling one stays quick


@pytest.fixture
def manager(tmp_path: Path):
    mgr = VolumeManager(tmp_path / "volumes", unit_bytes=UNIT_BYTES)
    yield mgr
    for info in mgr.list():
        mgr.delete(info.volume_id)


def fill(directory: Path, limit_bytes: int) -> tuple[int, int | None]:
    """Write 1 MiB chunks until an OSError or `limit_bytes`; return (bytes written, errno or None)."""
    written = 0
    chunk = b"\xa5" * (1024 * 1024)
    with open(directory / "fill.bin", "wb") as f:
        while written < limit_bytes:
            try:
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                return written, exc.errno
            written += len(chunk)
    return written, None


def test_create_gives_a_directory_that_holds_files_and_reports_usage(manager: VolumeManager) -> None:
    info = manager.create("vol1", 2)
    assert info.size_gb == 2 and Path(info.path) == manager.path("vol1")
    (Path(info.path) / "weights.bin").write_bytes(b"x" * 100_000)
    assert manager.usage_bytes("vol1") >= 100_000
    assert [v.volume_id for v in manager.list()] == ["vol1"]


def test_create_is_idempotent_for_the_same_size_and_conflicts_on_another(manager: VolumeManager) -> None:
    manager.create("vol1", 2)
    assert manager.create("vol1", 2).size_gb == 2
    with pytest.raises(Conflict):
        manager.create("vol1", 3)


def test_bad_ids_and_sizes_are_invalid_input(manager: VolumeManager) -> None:
    for bad_id in ("../x", "", "a/b"):
        with pytest.raises(InvalidInput):
            manager.create(bad_id, 1)
    for bad_size in (0, -1, 1.5, True, 10_000):
        with pytest.raises(InvalidInput):
            manager.create("vol1", bad_size)  # type: ignore[arg-type]


def test_resize_grows_and_refuses_to_shrink(manager: VolumeManager) -> None:
    manager.create("vol1", 2)
    assert manager.resize("vol1", 3).size_gb == 3
    with pytest.raises(InvalidInput) as err:
        manager.resize("vol1", 2)
    assert err.value.problems[0].field == "size"
    assert manager.get("vol1").size_gb == 3


def test_delete_removes_data_and_unknown_volumes_are_not_found(manager: VolumeManager) -> None:
    info = manager.create("vol1", 1)
    (Path(info.path) / "f").write_text("data")
    manager.delete("vol1")
    assert not Path(info.path).exists()
    for call in (manager.delete, manager.path, manager.usage_bytes, manager.ensure_mounted):
        with pytest.raises(NotFound):
            call("vol1")


def test_directory_volumes_say_their_size_is_not_enforced(tmp_path: Path) -> None:
    mgr = VolumeManager(tmp_path / "v", unit_bytes=UNIT_BYTES, enforce=False)
    info = mgr.create("plain", 1)
    assert info.enforced is False and info.reason and not info.mounted


def test_writing_past_the_size_fails_with_enospc_where_enforced(manager: VolumeManager) -> None:
    reason = enforcement_unavailable_reason()
    need("loop-mounts", reason is None, reason or "")
    info = manager.create("vol1", 2)
    need("loop-mounts", info.enforced, info.reason or "")
    assert info.mounted
    written, err = fill(Path(info.path), 4 * UNIT_BYTES)
    assert err == errno.ENOSPC
    assert written <= 2 * UNIT_BYTES


def test_growing_an_enforced_volume_makes_room_while_mounted(manager: VolumeManager) -> None:
    info = manager.create("vol1", 2)
    need("loop-mounts", info.enforced, info.reason or "")
    data = Path(info.path)
    first, err = fill(data, 4 * UNIT_BYTES)
    assert err == errno.ENOSPC
    (data / "fill.bin").unlink()
    grown = manager.resize("vol1", 4)
    assert grown.enforced and grown.mounted
    second, err = fill(data, 8 * UNIT_BYTES)
    assert err == errno.ENOSPC
    assert second > first + UNIT_BYTES


def test_an_enforced_volume_is_remounted_with_its_data_after_a_restart(tmp_path: Path) -> None:
    mgr = VolumeManager(tmp_path / "volumes", unit_bytes=UNIT_BYTES)
    info = mgr.create("vol1", 1)
    need("loop-mounts", info.enforced, info.reason or "")
    try:
        (Path(info.path) / "kept.txt").write_text("survives")
        subprocess.run(["umount", info.path], check=True)  # what a host reboot does to the mount
        assert not Path(info.path, "kept.txt").exists()
        again = VolumeManager(tmp_path / "volumes", unit_bytes=UNIT_BYTES).ensure_mounted("vol1")
        assert again.mounted and Path(info.path, "kept.txt").read_text() == "survives"
    finally:
        mgr.delete("vol1")
