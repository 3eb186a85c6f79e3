"""Wire schemas of what a host needs to run a VM: its disks and its spec (part of the agent
protocol, re-exported by common/messages.py)."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from common.fields import VmNameField
from common.network_messages import NicSpec
from common.replica_messages import ReplicaRef


class DiskKind(StrEnum):
    OS = "os"
    """The VM's boot disk: a copy-on-write (qcow2) overlay of its image."""
    DATA = "data"
    """An empty disk the VM got at create time or by ``disk attach``."""


class DiskStorage(StrEnum):
    """Where a disk's bytes live."""

    HOST_LOCAL = "host_local"
    """A file on the one host that first ran the VM; gone with that host."""
    REPLICATED = "replicated"
    """N synchronous copies on hosts in distinct fault domains, each served over NBD
    (common/replica_messages.py); the VM may run on any host and survives N-1 copies lost."""


class DiskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A disk as the agent needs it: which file to use or create, and from what."""

    disk_id: str
    """Unique for the lifetime of the cluster (a rebuilt disk gets a new id)."""
    kind: DiskKind
    size_mib: int = 0
    """Data disks: their size. OS disks: 0 (the image's size)."""
    image: str = ""
    """OS disks: the image's name (a host may carry built-in images such as ``tiny``)."""
    image_sha256: str = ""
    """OS disks: the image's digest in the gallery; empty means the host's built-in copy."""
    storage: DiskStorage = DiskStorage.HOST_LOCAL
    replicas: list[ReplicaRef] = []
    """Replicated disks: the current copies, the VM's own host's first if it holds one. The VM
    writes to every one of them and to no other copy."""


class VmSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: VmNameField
    size: str
    cpu_milli: int
    mem_mib: int
    image: str
    disks: list[DiskSpec] = []
    """OS disk first, then data disks in attach order. Empty (older schedulers): the agent
    makes an OS disk of ``image`` named after the VM."""
    nics: list[NicSpec] = []
    """A tap per NIC on its network's bridge (the agent has the network from
    ``ConfigureNetworks`` before it starts the VM)."""
