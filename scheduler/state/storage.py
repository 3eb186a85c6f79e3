"""Disk, image and network records (pure data), persisted with the VMs in the store."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec

from common.ids import HostId
from common.image_messages import ImageState
from common.messages import DiskKind, DiskStorage
from common.network_messages import EndpointProtocol

NOMINAL_OS_DISK_MIB = 1024
"""What an OS disk is charged on a host when its image's size is not known."""


def mib_of(size_bytes: int) -> int:
    """``size_bytes`` in MiB, rounded up."""
    return -(-size_bytes // (1024 * 1024))


class CopyState(StrEnum):
    """How a copy of a replicated disk stands (scheduler/core/replicas.py)."""

    CURRENT = "current"
    """Has every write the VM's guest was told is done: the VM may start from it."""
    FILLING = "filling"
    """A new copy of a disk whose VM does not run, being copied from a current one."""
    JOINING = "joining"
    """A new copy that the running VM's host brings in step (a mirror), then writes to."""
    LOST = "lost"
    """The last current copies of a disk none of whose copies is current any more, kept on
    their (down) hosts rather than deleted: one that comes back is current again
    (scheduler/core/copyloss.py)."""


class CopyRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One copy of a replicated disk: which host holds it, and how it stands."""

    host: HostId
    state: CopyState = CopyState.CURRENT
    made: bool = False
    """Its host reported it made and served once. A made copy its host reports being made
    again (or failed for good) was lost there: its host lost its disks."""
    progress: float = 0.0
    """A copy being made (filling, joining): how far, as last reported (0..1)."""


class DiskRecord(msgspec.Struct, kw_only=True, gc=False):
    """One disk of a VM and where its bytes live.

    A host-local disk is a file on ``host``: set when the VM first runs there, it pins the VM to
    that host (a stop/start finds the disk again), and it is lost with the host. A replicated
    disk leaves ``host`` empty: its ``copies`` live on hosts in distinct fault domains, and the
    VM may run anywhere (scheduler/core/replicas.py). A replicated disk without copies was
    never made: its copies are placed with the VM.
    """

    disk_id: str
    kind: DiskKind
    size_mib: int = 0
    image: str = ""
    image_sha256: str = ""
    storage: DiskStorage = DiskStorage.HOST_LOCAL
    host: HostId | None = None
    copies: list[CopyRecord] = []
    image_mib: int = 0
    """OS disks: their image's size in MiB when known (what a copy takes on a host); 0:
    unknown, ``NOMINAL_OS_DISK_MIB`` is charged."""

    @property
    def charged_mib(self) -> int:
        """The space the disk (one copy of it) takes on a host: its full virtual size."""
        if self.kind is DiskKind.DATA:
            return self.size_mib
        return self.image_mib or NOMINAL_OS_DISK_MIB

    @property
    def replicated(self) -> bool:
        return self.storage is DiskStorage.REPLICATED

    def copy_hosts(self, state: CopyState = CopyState.CURRENT) -> list[HostId]:
        """The hosts of its copies in ``state``, in order."""
        return [copy.host for copy in self.copies if copy.state is state]


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
