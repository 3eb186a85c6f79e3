"""The inventory a host reports when it runs just what the records place on it. Pure.

After a restart the scheduler holds no host's inventory; a host's first heartbeat carries only
its digest, checked against this prediction: a host that agrees needs no full report, and no
reconcile either (scheduler/core/hosts.py).
"""

from __future__ import annotations

from common.ids import HostId
from common.messages import DiskStorage, ObservedState, ObservedVm, VmState
from common.replica_messages import DiskReplicas
from common.resources import ZERO
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostRuntime, VmRecord
from scheduler.state.storage import CopyState


def inventory(state: ClusterState, host: HostId) -> list[ObservedVm] | None:
    """The inventory a host reports when it runs just what the records place on it (None
    if one of its VMs is in transition: no report can be predicted then)."""
    result: list[ObservedVm] = []
    vms = state.vms
    for name in sorted(state.by_host.get(host, ())):
        record = vms[name]
        disks = _disks(record, host)
        if record.state is not VmState.RUNNING or disks is None:
            return None
        result.append(
            ObservedVm(
                name=name,
                generation=record.generation,
                state=ObservedState.RUNNING,
                cpu_milli=record.cpu_milli,
                mem_mib=record.mem_mib,
                disks=disks,
            )
        )
    return result


def reconciled(state: ClusterState, runtime: HostRuntime) -> bool:
    """Whether a host whose inventory is the prediction is reconciled already: a reconcile
    would find every VM running as recorded, no orphan, nothing to send (it was a third of each
    host's first heartbeat after a restart). Not while migrations or replicated disks are in
    the records: their rooms observe each inventory taken in."""
    busy = state.migrating or state.disks.held or state.disks.by_copies
    return not busy and runtime.orphaned == ZERO


def _disks(record: VmRecord, host: HostId) -> list[DiskReplicas] | None:
    """What the host reports of the VM's replicated disks when it writes to just their current
    copies, its own first, as it was told (None while a copy is being brought in step)."""
    disks = []
    for disk in record.disks:
        if disk.storage is not DiskStorage.REPLICATED:  # ``replicated``, without a call per disk
            continue
        if any(copy.state is CopyState.JOINING for copy in disk.copies):
            return None
        current = disk.copy_hosts()
        current.sort(key=lambda h: h != host)
        disks.append(DiskReplicas(disk_id=disk.disk_id, in_sync=list(current)))
    return disks
