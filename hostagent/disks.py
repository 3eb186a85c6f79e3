"""Host-local disks of the qemu driver: qcow2 files made and flattened with ``qemu-img``.

An OS disk is a qcow2 overlay whose backing file is the cached image (writes land only in the
overlay); a data disk is an empty qcow2 of its size. Disks are named by their id
(``<disks_dir>/<disk_id>.qcow2``), so a VM started again on the same host finds its disks, and a
rebuilt disk (new id) never reuses an old file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
from pathlib import Path

from common.errors import DriverError
from common.ids import whole
from common.images import ImageFormat, read_header, sniff_format
from common.messages import DiskKind, DiskSpec, VmSpec
from common.spec_messages import DiskStorage
from hostagent.images import ImageCache

log = logging.getLogger(__name__)

DISK_ID_RE = re.compile(whole(r"[a-z0-9][a-z0-9-]{0,127}"))
QEMU_IMG_TIMEOUT_S = 120.0


def effective_disks(spec: VmSpec) -> list[DiskSpec]:
    """The VM's disks, OS disk first; an older scheduler's spec gets one OS disk of its image."""
    if spec.disks:
        return list(spec.disks)
    return [DiskSpec(disk_id=f"{spec.name}-os", kind=DiskKind.OS, image=spec.image)]


async def run_qemu_img(*args: str, timeout_s: float = QEMU_IMG_TIMEOUT_S) -> None:
    binary = shutil.which("qemu-img")
    if binary is None:
        raise DriverError(
            "qemu-img not found on this host: apt-get install -y qemu-utils", retryable=True
        )
    proc = await asyncio.create_subprocess_exec(
        binary,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            _, stderr = await proc.communicate()
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise DriverError(
            f"qemu-img {args[0]} timed out after {timeout_s:g}s", retryable=True
        ) from exc
    if proc.returncode != 0:
        detail = stderr.decode(errors="replace").strip()
        retryable = any(reason in detail for reason in _TRANSIENT)
        raise DriverError(f"qemu-img {args[0]} failed: {detail}", retryable=retryable)


_TRANSIENT = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
"""qemu-img failures that say the host's disk is full: another host may have room (and this one
later), so the start is retried elsewhere rather than failing the VM for good."""


class DiskStore:
    def __init__(self, disks_dir: Path, images: ImageCache) -> None:
        self.disks_dir = disks_dir
        self.images = images

    def path(self, disk_id: str) -> Path:
        if not DISK_ID_RE.fullmatch(disk_id):
            raise DriverError(f"invalid disk id {disk_id!r}", retryable=False)
        return self.disks_dir / f"{disk_id}.qcow2"

    async def prepare(self, spec: VmSpec) -> tuple[list[Path], list[Path]]:
        """Every host-local disk of ``spec`` as a file, creating the missing ones (a replicated
        disk has no file here: its copies are served by replica servers).

        Returns (the host-local disk paths in order, the paths created by this call).
        """
        self.disks_dir.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        created: list[Path] = []
        try:
            for disk in effective_disks(spec):
                if disk.storage is DiskStorage.REPLICATED:
                    continue
                path = self.path(disk.disk_id)
                paths.append(path)
                if path.exists():
                    continue
                if disk.kind is DiskKind.OS:
                    await self._make_overlay(disk.image or spec.image, disk.image_sha256, path)
                else:
                    await run_qemu_img(
                        "create", "-q", "-f", "qcow2", str(path), f"{disk.size_mib}M"
                    )
                created.append(path)
                log.info(
                    "disk created vm=%s disk_id=%s kind=%s", spec.name, disk.disk_id, disk.kind
                )
        except BaseException:
            self.remove_paths(created)
            raise
        return paths, created

    async def _make_overlay(self, image: str, sha256: str, path: Path) -> None:
        base = await self.images.resolve(image, sha256)
        base_format = sniff_format(read_header(base), base.stat().st_size)
        if not isinstance(base_format, ImageFormat):
            raise DriverError(f"image {image!r} is unusable: {base_format}", retryable=False)
        partial = path.with_name(f".{path.name}.partial")
        await run_qemu_img(
            "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format.value, str(partial)
        )
        partial.rename(path)

    async def flatten(self, disk_id: str, dest: Path, source: Path | None = None) -> None:
        """Write disk ``disk_id`` (its file here, or ``source``: this host's copy of a
        replicated disk) with its backing image merged in, as one compressed qcow2."""
        source = source or self.path(disk_id)
        if not source.exists():
            raise DriverError(
                f"disk {disk_id} is not on this host (a replicated disk is captured on a host "
                "holding one of its copies)",
                retryable=False,
            )
        await run_qemu_img("convert", "-c", "-O", "qcow2", str(source), str(dest))

    def remove(self, disk_ids: list[str]) -> None:
        self.remove_paths([self.path(disk_id) for disk_id in disk_ids])

    @staticmethod
    def remove_paths(paths: list[Path]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                log.info("disk removed path=%s", path.name)
