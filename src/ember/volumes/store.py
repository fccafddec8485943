"""Network volumes on this host: a directory per volume, bind-mounted into workers at /runpod-volume.

Where the host allows (root, `mkfs.ext4`, loop mounts) a volume is a sparse ext4 image of its size,
loop-mounted, so writing past the size fails with ENOSPC; elsewhere a plain directory, `enforced: False`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from ember.core.errors import BackendError, Conflict, InvalidInput, NotFound, Problem

CONTAINER_PATH = "/runpod-volume"
VOLUME_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SIZE_GB = 4096
GIB = 1024**3


@dataclass(frozen=True)
class VolumeInfo:
    volume_id: str
    size_gb: int
    path: str  # the host directory to bind-mount at /runpod-volume
    enforced: bool  # the size is a hard limit (ENOSPC past it)
    reason: str | None  # why not enforced, when it is not
    mounted: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _run(args: list[str], timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"{args[0]} failed: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-500:]
        raise BackendError(f"{' '.join(args[:2])} failed (exit {proc.returncode}): {tail}")
    return proc


def enforcement_unavailable_reason() -> str | None:
    """None if this host can back volumes by loop-mounted ext4 images; else why not (a quick static check)."""
    if os.geteuid() != 0:
        return "not running as root (loop mounts need root)"
    for tool in ("mkfs.ext4", "mount", "umount", "losetup", "resize2fs"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control is missing)"
    return None


class VolumeManager:
    """Create, grow, measure and delete network volumes under `root`; state lives in each volume's meta.json.

    `unit_bytes` is what one "GB" of `size_gb` is on disk (1 GiB; tests pass less to stay small).
    `enforce`: None tries loop-mounted images and falls back to directories; False never tries.
    """

    def __init__(self, root: Path, *, unit_bytes: int = GIB, enforce: bool | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.unit_bytes = unit_bytes
        self._enforce = enforce

    # ---- paths and metadata ----------------------------------------------------------------------

    def _dir(self, volume_id: str) -> Path:
        if not isinstance(volume_id, str) or not VOLUME_ID_RE.match(volume_id):
            raise InvalidInput(
                "invalid volume id", [Problem("volumeId", "letters, digits, _ . -", volume_id)]
            )
        return self.root / volume_id

    def _image(self, volume_id: str) -> Path:
        return self._dir(volume_id) / "volume.img"

    def path(self, volume_id: str) -> Path:
        """The host directory to bind-mount at /runpod-volume (NotFound if the volume does not exist)."""
        self._meta(volume_id)
        return self._dir(volume_id) / "data"

    def _meta(self, volume_id: str) -> dict[str, object]:
        try:
            meta: dict[str, object] = json.loads((self._dir(volume_id) / "meta.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"volume {volume_id} does not exist on this host") from None
        return meta

    def _write_meta(self, volume_id: str, meta: dict[str, object]) -> None:
        path = self._dir(volume_id) / "meta.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, sort_keys=True))
        os.replace(tmp, path)

    def _info(self, volume_id: str, meta: dict[str, object]) -> VolumeInfo:
        data = self._dir(volume_id) / "data"
        return VolumeInfo(
            volume_id=volume_id,
            size_gb=int(str(meta["size_gb"])),
            path=str(data),
            enforced=bool(meta["enforced"]),
            reason=meta.get("reason") if isinstance(meta.get("reason"), str) else None,  # type: ignore[arg-type]
            mounted=os.path.ismount(data),
        )

    def _check_size(self, size_gb: object) -> int:
        if not isinstance(size_gb, int) or isinstance(size_gb, bool) or not 1 <= size_gb <= MAX_SIZE_GB:
            raise InvalidInput(
                "invalid volume size", [Problem("size", f"an integer 1..{MAX_SIZE_GB} (GB)", size_gb)]
            )
        return size_gb

    # ---- lifecycle -------------------------------------------------------------------------------

    def create(self, volume_id: str, size_gb: int) -> VolumeInfo:
        """Create the volume (idempotent for one size; Conflict for another). Mounts it if enforced."""
        size_gb = self._check_size(size_gb)
        vdir = self._dir(volume_id)
        if (vdir / "meta.json").exists():
            existing = self._meta(volume_id)
            if existing["size_gb"] != size_gb:
                raise Conflict(f"volume {volume_id} exists with size {existing['size_gb']} GB")
            return self.ensure_mounted(volume_id)
        (vdir / "data").mkdir(parents=True, exist_ok=True)
        reason = "enforcement disabled by configuration" if self._enforce is False else None
        reason = reason or enforcement_unavailable_reason()
        enforced = False
        if reason is None:
            try:
                image = self._image(volume_id)
                with open(image, "wb") as f:
                    f.truncate(size_gb * self.unit_bytes)  # sparse: no disk used until written
                _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", volume_id[:16], str(image)])
                _run(["mount", "-o", "loop", str(image), str(vdir / "data")])
                enforced = True
            except BackendError as exc:
                reason = f"loop-mounted image failed: {exc.message}"
                self._image(volume_id).unlink(missing_ok=True)
        if reason is not None and self._enforce is True:
            shutil.rmtree(vdir, ignore_errors=True)
            raise BackendError(f"cannot enforce the size of volume {volume_id}: {reason}")
        meta: dict[str, object] = {"size_gb": size_gb, "enforced": enforced, "reason": reason}
        self._write_meta(volume_id, meta)
        return self._info(volume_id, meta)

    def ensure_mounted(self, volume_id: str) -> VolumeInfo:
        """After a host or control-plane restart: re-mount an enforced volume's image if it is not mounted."""
        meta = self._meta(volume_id)
        data = self._dir(volume_id) / "data"
        if meta["enforced"] and not os.path.ismount(data):
            data.mkdir(parents=True, exist_ok=True)
            _run(["mount", "-o", "loop", str(self._image(volume_id)), str(data)])
        return self._info(volume_id, meta)

    def resize(self, volume_id: str, size_gb: int) -> VolumeInfo:
        """Grow the volume to `size_gb` (online for enforced volumes). Shrinking is InvalidInput."""
        size_gb = self._check_size(size_gb)
        meta = self._meta(volume_id)
        current = int(str(meta["size_gb"]))
        if size_gb < current:
            raise InvalidInput(
                "volumes can only grow",
                [Problem("size", f"must be at least the current size, {current} GB", size_gb)],
            )
        if size_gb == current:
            return self._info(volume_id, meta)
        if meta["enforced"]:
            self.ensure_mounted(volume_id)
            image = self._image(volume_id)
            with open(image, "r+b") as f:
                f.truncate(size_gb * self.unit_bytes)
            self._grow_filesystem(volume_id, image)
        meta["size_gb"] = size_gb
        self._write_meta(volume_id, meta)
        return self._info(volume_id, meta)

    def _grow_filesystem(self, volume_id: str, image: Path) -> None:
        """Grow ext4 to the image's new length: online if the kernel allows, else unmount, grow, remount."""
        device = _run(["losetup", "-j", str(image)]).stdout.split(":", 1)[0].strip()
        if device:
            try:
                _run(["losetup", "-c", device])
                _run(["resize2fs", device])
                return
            except BackendError:
                pass  # e.g. a sandboxed kernel without online resize: fall back to offline
        data = self._dir(volume_id) / "data"
        if os.path.ismount(data):
            try:
                _run(["umount", str(data)])
            except BackendError as exc:
                raise BackendError(
                    f"volume {volume_id} is in use; stop its workers to grow it ({exc.message})"
                )
        try:
            _run(["e2fsck", "-f", "-p", str(image)])
            _run(["resize2fs", str(image)])
        finally:
            _run(["mount", "-o", "loop", str(image), str(data)])

    def delete(self, volume_id: str) -> None:
        """Unmount and delete the volume and its data. NotFound if absent; BackendError if still in use."""
        self._meta(volume_id)
        data = self._dir(volume_id) / "data"
        if os.path.ismount(data):
            _run(["umount", str(data)])
        shutil.rmtree(self._dir(volume_id))

    def get(self, volume_id: str) -> VolumeInfo:
        return self._info(volume_id, self._meta(volume_id))

    def list(self) -> list[VolumeInfo]:
        out = []
        for meta_path in sorted(self.root.glob("*/meta.json")):
            try:
                out.append(self.get(meta_path.parent.name))
            except (NotFound, InvalidInput, ValueError, KeyError):
                continue
        return out

    def usage_bytes(self, volume_id: str) -> int:
        """Disk bytes the volume's files use (allocated blocks, so sparse files count what they hold)."""
        data = self.path(volume_id)
        total = 0
        for dirpath, dirnames, filenames in os.walk(data):
            if dirpath == str(data) and "lost+found" in dirnames:
                dirnames.remove("lost+found")
            for name in filenames:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except FileNotFoundError:
                    continue
        return total
