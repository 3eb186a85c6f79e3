"""Wire schemas of what a host needs to run a VM: its disks and its spec (part of the agent
protocol, re-exported by common/messages.py)."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from common.fields import VmNameField
from common.network_messages import NicSpec


class DiskKind(StrEnum):
    OS = "os"
    """The VM's boot disk: a copy-on-write (qcow2) overlay of its image."""
    DATA = "data"
    """An empty disk the VM got at create time or by ``disk attach``."""


class DiskStorage(StrEnum):
    """Where a disk's bytes live. Only host-local storage exists so far: the disk is a file on
    one host and is gone with it. Shared storage (reachable from every host) is a later kind."""

    HOST_LOCAL = "host_local"


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
