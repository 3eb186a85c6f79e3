"""Disk, image and network records (pure data), persisted with the VMs in the store."""

from __future__ import annotations

from datetime import datetime

import msgspec

from common.ids import HostId
from common.image_messages import ImageState
from common.messages import DiskKind, DiskStorage
from common.network_messages import EndpointProtocol


class DiskRecord(msgspec.Struct, kw_only=True, gc=False):
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


class ImageRecord(msgspec.Struct, kw_only=True, gc=False):
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


# --------------------------------------------------------------------------- networks

FIRST_VNI = 4096
"""VNIs below this are left to other users of VXLAN on the hosts."""


class VnetRecord(msgspec.Struct, kw_only=True, gc=False):
    """A virtual network. A deleted one stays as a tombstone (its name may be used again, by a
    network with a new VNI)."""

    name: str
    cidr: str
    region: str | None = None
    vni: int
    created_at: datetime
    deleted: bool = False


class NicRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A NIC of a VM: its address belongs to the VM (kept across stop/start and moves) until
    the VM is deleted. ``ip`` is empty while the network had no free address (``no_address``)."""

    index: int
    vnet: str
    vni: int
    mac: str
    ip: str = ""
    prefix_len: int
    gateway: str


class EndpointRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A port of the VM's first NIC forwarded from a port of its host. ``public_port`` and
    ``address`` say where it answers now (None while the VM has no host); ``requested_port``
    is the port asked for, ``previous_port`` the one it had last (tried first on a new host)."""

    vm_port: int
    protocol: EndpointProtocol = EndpointProtocol.TCP
    allow: list[str] = []
    requested_port: int | None = None
    public_port: int | None = None
    address: str | None = None
    previous_port: int | None = None


class NetCounters(msgspec.Struct, kw_only=True):
    """Counters that are never turned back, stored with the records."""

    vni: int = FIRST_VNI - 1
    """The last VNI handed out: networks get VNIs from 4096 up, never one twice."""
    mac_serial: int = 0
    """MACs handed out so far: the next NIC gets ``52:54:00`` + the next serial."""
