"""Disk and image records (pure data), persisted with the VMs in the store."""

from __future__ import annotations

from datetime import datetime

import msgspec

from common.ids import HostId
from common.image_messages import ImageState
from common.messages import DiskKind, DiskStorage


class DiskRecord(msgspec.Struct, kw_only=True):
    """One disk of a VM and where its bytes live.

    A host-local disk is a file on ``host``: set when the VM first runs there, it pins the VM to
    that host (a stop/start finds the disk again), and it is lost with the host. A later shared
    storage kind would leave ``host`` empty and let the VM run anywhere.
    """

    disk_id: str
    kind: DiskKind
    size_mib: int = 0
    image: str = ""
    image_sha256: str = ""
    storage: DiskStorage = DiskStorage.HOST_LOCAL
    host: HostId | None = None


class ImageRecord(msgspec.Struct, kw_only=True):
    """A gallery image. Its bytes are in the images object store under ``sha256``."""

    name: str
    version: int = 1
    os: str = "linux"
    format: str = "qcow2"
    size_bytes: int = 0
    sha256: str = ""
    """Empty for a built-in image the scheduler has no copy of: hosts use their own."""
    state: ImageState = ImageState.AVAILABLE
    builtin: bool = False
    source_vm: str | None = None
    reason: str = ""
    created_at: datetime
    capture_disk: str = ""
    """While capturing: the OS disk being flattened, on ``capture_host``."""
    capture_host: HostId | None = None
