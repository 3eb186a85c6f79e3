"""Wire schemas of replicated disks: N synchronous copies of a disk on hosts in distinct fault
domains, kept by QEMU's own block layer.

Every host serves the replicas it holds from one ``qemu-storage-daemon``: each replica is a
qcow2 file on that host, exported over NBD (export name = the disk id) on the host's underlay
address and ``Heartbeat.replica_port``. A VM's QEMU opens a replicated disk as a ``quorum`` of
NBD clients, one per current replica, with the vote threshold equal to the number of copies: a
guest write (and ``fsync``) completes only when every copy has it. A copy that fails a write
stops the VM (``werror=stop``) until the scheduler has recorded that copy as lost and sent the
smaller set; only then does the agent drop it and let the VM go on, so an acknowledged write is
on every copy the scheduler counts as current.

Replica hosts get ``ConfigureReplicas`` (the whole desired set of replicas on that host,
level-triggered like ``ConfigureNetworks``): the agent makes what is missing, serves it, and
deletes replicas the set no longer names. It echoes the applied ``digest`` in
``Heartbeat.replica_digest`` and lists the replicas that are not ready yet in
``Heartbeat.replicas``. Once a host holds a set, the scheduler sends what changes in it as
``UpdateReplicas`` (from the digest it names, ``base``, to ``digest``); a host that does not
hold ``base`` ignores it and keeps reporting its digest, and is sent the whole set. A set's
digest is the sum, modulo 2**64, of a hash of each replica's spec (common/replicaset.py).

The host running a VM gets the VM's current copies in its spec (``DiskSpec.replicas``) and, when
the copy set changes while the VM runs, ``SetDiskReplicas``: a copy no longer named is dropped
from the quorum; a copy in ``joining`` is brought in step by a mirror in write-blocking mode and
then added to the quorum. The agent reports each replicated disk's copies in
``ObservedVm.disks``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from common.fields import DigestField, Generation, HostIdField, VmNameField

ReplicaPort = Annotated[int, msgspec.Meta(ge=0, le=65535)]
MAX_REPLICAS = 3


class ReplicaRef(msgspec.Struct, frozen=True, kw_only=True):
    """Where one copy of a replicated disk is served: the NBD export ``disk_id`` of the
    replica server on ``host`` at ``address``:``port``."""

    host: HostIdField
    address: str
    """The host's underlay address (loopback on a one-machine cluster)."""
    port: ReplicaPort


class ReplicaInfo(msgspec.Struct, kw_only=True, gc=False):
    """One copy of a replicated disk as the API shows it (``DiskInfo.replicas``)."""

    host: str
    state: str
    """``current`` (has every acknowledged write), ``joining`` or ``filling`` (being brought
    in step; ``progress``)."""
    progress: float = 0.0


# --------------------------------------------------------------------------- replica hosts


class ReplicaState(StrEnum):
    CREATING = "creating"
    """The file is being made (an OS disk's image may be downloading)."""
    FILLING = "filling"
    """Copying a current replica's content (``ReplicaSpec.fill_from``); ``progress`` tells."""
    READY = "ready"
    """Made (and filled) and exported: a VM may open it."""
    FAILED = "failed"
    """Could not be made or filled; ``reason`` says why (``retryable``: try again later)."""
    LOST = "lost"
    """Made before (``ConfigureReplicas.existing``) but not held here any more (the host's
    disks were lost or wiped): never made anew, which would give it none of the writes its
    other copies have. The scheduler drops it and has another copy made from a current one."""


class ReplicaSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One replica a host must hold and serve."""

    disk_id: str
    vm: VmNameField
    kind: str
    """``os`` or ``data`` (common.spec_messages.DiskKind)."""
    size_mib: int = 0
    """Data disks: their size. OS disks: 0 (the image's size)."""
    image: str = ""
    image_sha256: str = ""
    fill_from: ReplicaRef | None = None
    """A new copy of a disk whose VM does not run: copy this current replica's content before
    reporting ready. None: create it (an OS disk over its image, a data disk empty) — a new
    disk, or a copy that the running VM's host fills by mirroring (``SetDiskReplicas``)."""
    fill_mib_s: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    """The copy from ``fill_from`` goes at most this fast; 0: as fast as it can."""


class ConfigureReplicas(msgspec.Struct, tag="configure_replicas", kw_only=True):
    """The whole desired set of replicas on one host. Applying it makes and serves what is
    missing and deletes the replicas it no longer names; applying it twice changes nothing."""

    replicas: list[ReplicaSpec] = []
    digest: DigestField
    """Names this set; the agent echoes it in ``Heartbeat.replica_digest``."""
    existing: list[str] = []
    """The disk ids of the named replicas that were made before (on this host, as the
    scheduler's records say): a host that does not hold one reports it ``lost`` and never makes
    it anew. Not part of the digest: a host that applied the set holds them already."""


class UpdateReplicas(msgspec.Struct, tag="update_replicas", kw_only=True):
    """What changed in a host's replica set since the set whose digest is ``base``: applied
    only to that set (else ignored), it leaves the set whose digest is ``digest``."""

    base: DigestField
    digest: DigestField
    added: list[ReplicaSpec] = []
    """Replicas the set did not name."""
    changed: list[ReplicaSpec] = []
    """Replicas it named with another spec (by disk id): e.g. a copy given a source to fill from."""
    removed: list[str] = []
    """The disk ids of replicas it no longer names (deleted from the host)."""
    existing: list[str] = []
    """Of ``added`` and ``changed``, those made before (as ``ConfigureReplicas.existing``)."""


class ReplicaStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A replica of this host that is not ready (in ``Heartbeat.replicas``)."""

    disk_id: str
    state: ReplicaState
    progress: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    reason: str = ""
    retryable: bool = False


# --------------------------------------------------------------------------- the VM's host


class SetDiskReplicas(msgspec.Struct, tag="set_disk_replicas", kw_only=True):
    """Change the copy set of a replicated disk of a running VM at ``generation``: drop the
    copies of its quorum not in ``replicas``; bring each of ``joining`` in step and add it."""

    name: VmNameField
    generation: Generation
    disk_id: str
    replicas: list[ReplicaRef]
    """The current copies the VM keeps writing to (never empty)."""
    joining: list[ReplicaRef] = []
    """New copies (ready, empty) to fill from the VM's own disk and then write to."""
    speed_mib_s: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    """The mirror bringing ``joining`` in step goes at most this fast; 0: as fast as it can."""


class DiskReplicas(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A replicated disk of a VM as its host sees it (in ``ObservedVm.disks``)."""

    disk_id: str
    in_sync: list[HostIdField]
    """The hosts whose copies the VM writes to now: each has every acknowledged write."""
    joining: dict[HostIdField, float] = {}
    """Copies being brought in step, with their progress (0..1)."""
    failed: list[HostIdField] = []
    """Copies that failed a write: the VM is paused until the scheduler drops them."""


ReplicaCommand = ConfigureReplicas | UpdateReplicas | SetDiskReplicas
"""The replicated-disk commands (in ``AgentCommand``)."""
