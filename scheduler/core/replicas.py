"""Replicated disks in the core: the storage kind, where the copies go, what a VM's host is
told of them, and what happens when copies are lost. Pure; the protocol is
common/replica_messages.py.

- **Kind.** Decided once, at create, for all of a VM's disks: ``CreateVm.storage``, else
  ``[storage] default_kind``; ``auto`` is replicated once the up, uncordoned hosts serving
  replicas in the VM's region span ``storage.replicas`` fault domains. Replicated asked for
  where they do not: refused (nothing changes), since no wait would make a fault domain
  appear.
- **Copies.** A disk without copies was never made: when its VM is placed on H, it gets one
  copy on H (if H serves replicas) and the others on the best hosts of other fault domains
  (scheduler/placement/copies.py), all ``current`` (they are equal: empty, or the image). A
  VM placed again prefers the hosts holding a current copy, and needs none where it goes:
  its QEMU reaches every copy over NBD. Copies not finished (``filling``, ``joining``) are
  dropped when the VM is placed: it writes only to current ones (a rebuild makes them again).
- **Start.** ``StartVm`` goes out only once every current copy of every replicated disk is
  ready on its host (hostreplicas.py learns that from heartbeats, and keeps it as the hosts'
  runtime, not in the records); the spec lists those copies (``DiskSpec.replicas``, the VM's
  host's first). The copies are recorded ``made`` in the step that starts the VM, in one
  change of its record: from then on the guest's writes are on them. (A copy its host served
  and then reports not ready is recorded made before that report is judged.)
- **Loss** (copyloss.py, copyreports.py). A host declared dead loses its copies, in that
  step's records; a disk's last current copies are kept (``lost``) and its VM waits for one of
  them to come back (failed only once none can). A running VM that reports a copy failed has
  it dropped in the records before its host is sent the smaller set (``SetDiskReplicas``), so
  every write the guest was told is done is on every copy counted current.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from msgspec.structs import replace

from common.fields import ErrorCode
from common.ids import HostId
from common.messages import DiskStorage, VmReply, VmSpec, VmState
from common.replica_messages import ReplicaRef, SetDiskReplicas
from scheduler.core.context import StepContext
from scheduler.core.reconciler import spec_of
from scheduler.core.views import vm_error
from scheduler.placement.copies import CopyRequest, eligible
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostRecord, VmRecord
from scheduler.state.storage import CopyRecord, CopyState, DiskRecord

LOOPBACK = "127.0.0.1"
WAITING = "waiting for its disk copies to be ready"
COPY_STARTED = "making a new copy of disk"
"""How a VM event's reason begins when new copies of its disks are started (one per disk,
``; ``-separated); the metrics count them."""
COPY_CURRENT = "new copy of disk"
"""And when new copies became current (``... is current``)."""


def copies_current_reason(done: list[tuple[str, HostId]]) -> str:
    """The reason of a VM whose new copies (disk id, host) became current."""
    return (
        f"{COPY_CURRENT} " + "; ".join(f"{disk} on {host}" for disk, host in done) + " is current"
    )


# --------------------------------------------------------------------------- the kind


def storage_for(
    ctx: StepContext, asked: DiskStorage | None, region: str | None
) -> DiskStorage | VmReply:
    """The storage kind of a new VM's disks, or why it cannot have the kind asked for."""
    wanted = ctx.config.storage.replicas
    kind = asked
    if kind is None and ctx.config.storage.default_kind != "auto":
        kind = DiskStorage(ctx.config.storage.default_kind)
    if kind is DiskStorage.HOST_LOCAL:
        return kind
    domains = ctx.views.replica_domains(region)
    if kind is None:
        return DiskStorage.REPLICATED if len(domains) >= wanted else DiskStorage.HOST_LOCAL
    if len(domains) < wanted:
        where = f"region {region!r}" if region else "the cluster"
        have = ", ".join(sorted(domains)) or "none"
        detail = (
            f"replicated storage needs up hosts serving replicas in {wanted} fault domains; "
            f"{where} has {len(domains)} ({have})"
        )
        return vm_error(ErrorCode.INSUFFICIENT_CAPACITY, detail)
    return kind


def is_replicated(record: VmRecord) -> bool:
    return any(disk.replicated for disk in record.disks)


# --------------------------------------------------------------------------- placement


def disk_demand_mib(record: VmRecord) -> int:
    """The disk space the VM's placement makes on its host: new host-local disks, and a copy
    of each replicated disk not made yet."""
    return sum(
        disk.charged_mib
        for disk in record.disks
        if (disk.copies == [] if disk.replicated else disk.host is None)
    )


def preferred_hosts(state: ClusterState, record: VmRecord) -> tuple[HostId, ...]:
    """The up hosts holding a current copy of the most of its replicated disks."""
    counts: Counter[HostId] = Counter()
    for disk in record.disks:
        if disk.replicated:
            counts.update(disk.copy_hosts())
    if not counts:
        return ()
    most = max(counts.values())
    return tuple(
        sorted(
            host
            for host, count in counts.items()
            if count == most and (known := state.hosts.get(host)) is not None and known.up
        )
    )


def every_copy_lost(record: VmRecord) -> DiskRecord | None:
    """A replicated disk of the VM that was made and has no current copy left."""
    return next((d for d in record.disks if d.replicated and d.copies and not d.copy_hosts()), None)


def lost_reason(disk: DiskRecord) -> str:
    return f"every replica of disk {disk.disk_id} lost"


def place_copies(ctx: StepContext, record: VmRecord, host: HostId) -> str | None:
    """The VM is being placed on ``host``: copies for its disks not made yet (one on ``host``
    when it serves replicas, the others in other fault domains), unfinished copies dropped.
    None when done; else why it cannot be placed there (nothing changed)."""
    fresh = [disk for disk in record.disks if disk.replicated and not disk.copies]
    hosts: list[HostId] = []
    if fresh:
        index = ctx.views.copies()
        view = index.view(host)
        here = eligible(view)
        wanted = ctx.config.storage.replicas
        request = CopyRequest(
            count=wanted - here,
            disk_mib=sum(disk.charged_mib for disk in fresh),
            region=view.region,
            taken_domains=frozenset({view.fault_domain}) if here else frozenset(),
            avoid=frozenset({host}),
        )
        others = index.choose(request)
        if others is None:
            return f"no room for {wanted} copies of its disks in distinct fault domains"
        hosts = [host, *others] if here else others
    disks = []
    for disk in record.disks:
        if disk.replicated and not disk.copies:
            disk = replace(disk, copies=[CopyRecord(host=h) for h in hosts])
        elif disk.replicated and len(disk.copy_hosts()) != len(disk.copies):
            disk = replace(disk, copies=[c for c in disk.copies if c.state is CopyState.CURRENT])
        disks.append(disk)
    if disks != record.disks:
        ctx.change_vm(record, disks=disks)
    if not fresh and ready(ctx.state, record):
        mark_made(ctx, record)  # started at once with the copies it has
    return None


# --------------------------------------------------------------------------- what hosts are told


def ref_of(host: HostRecord) -> ReplicaRef:
    return ReplicaRef(
        host=host.host_id, address=host.underlay_ip or LOOPBACK, port=host.replica_port
    )


def refs(state: ClusterState, hosts: list[HostId], own: HostId | None = None) -> list[ReplicaRef]:
    """Where ``hosts``' copies are served (the up ones), ``own``'s first."""
    found = [
        ref_of(record)
        for host in hosts
        if (record := state.hosts.get(host)) is not None and record.up and record.replica_port
    ]
    found.sort(key=lambda ref: ref.host != own)
    return found


def vm_spec(state: ClusterState, record: VmRecord, own: HostId | None = None) -> VmSpec:
    """The VM's spec, its replicated disks with their current copies (those of ``own``, by
    default the VM's host, first)."""
    spec = spec_of(record)
    if not is_replicated(record):
        return spec
    own = own or record.host
    disks = [
        replace(wire, replicas=refs(state, disk.copy_hosts(), own)) if disk.replicated else wire
        for wire, disk in zip(spec.disks, record.disks, strict=True)
    ]
    return replace(spec, disks=disks)


def copy_ready(state: ClusterState, host: HostId, disk_id: str) -> bool:
    """The host holds and serves the copy (as its last heartbeat said)."""
    record, runtime = state.hosts.get(host), state.runtimes.get(host)
    if record is None or not record.up or runtime is None or not record.replica_port:
        return False
    return disk_id in runtime.replicas_held and disk_id not in runtime.replicas_unready


def ready(state: ClusterState, record: VmRecord) -> bool:
    """Every current copy of every replicated disk of the VM is ready: it may start."""
    for disk in record.disks:
        if disk.replicated:
            current = disk.copy_hosts()
            if not current or not all(copy_ready(state, h, disk.disk_id) for h in current):
                return False
    return True


def mark_made(ctx: StepContext, record: VmRecord) -> None:
    """The VM is started with its current copies: they are recorded made (in one change), so
    that one its host reports being made again from now on counts as lost there. Until its
    VM first writes to it a copy holds what a new one would (nothing, or the image)."""
    if all(c.made or c.state is not CopyState.CURRENT for d in record.disks for c in d.copies):
        return
    disks = [
        replace(d, copies=[_made(c) for c in d.copies]) if d.replicated else d for d in record.disks
    ]
    ctx.change_vm(record, disks=disks)


def _made(copy: CopyRecord) -> CopyRecord:
    return replace(copy, made=True) if copy.state is CopyState.CURRENT and not copy.made else copy


def start_spec(ctx: StepContext) -> Callable[[VmRecord], VmSpec | None]:
    """The reconciler's spec of a VM to start: None while its copies are not ready (once they
    are, they are recorded made: the VM is started with them)."""
    state = ctx.state

    def spec(record: VmRecord) -> VmSpec | None:
        if is_replicated(record):
            if not ready(state, record):
                return None
            mark_made(ctx, record)
        return vm_spec(state, record)

    return spec


# --------------------------------------------------------------------------- running VMs


def running_on(state: ClusterState, record: VmRecord) -> HostId | None:
    """The VM's host, when it runs there (or is starting) and the host is up."""
    host = record.host
    if host is None or record.state not in (VmState.STARTING, VmState.RUNNING):
        return None
    known = state.hosts.get(host)
    return host if known is not None and known.up else None


def set_commands(ctx: StepContext, record: VmRecord) -> list[SetDiskReplicas]:
    """The copy sets the VM's host should apply: its current copies, and the joining ones
    that are ready on their hosts."""
    state = ctx.state
    commands = []
    own = record.host
    for disk in record.disks:
        if not disk.replicated or not disk.copy_hosts():
            continue
        joining = [
            h for h in disk.copy_hosts(CopyState.JOINING) if copy_ready(state, h, disk.disk_id)
        ]
        commands.append(
            SetDiskReplicas(
                name=record.name,
                generation=record.generation,
                disk_id=disk.disk_id,
                replicas=refs(state, disk.copy_hosts(), own),
                joining=refs(state, joining, own),
                speed_mib_s=ctx.config.storage.rebuild_mib_per_s,
            )
        )
    return commands


def push(ctx: StepContext, record: VmRecord) -> None:
    """Send the VM's host its copy sets (``ctx.send`` keeps repeats to one per retry), if it
    last reported the VM there: a host back without it (its agent started again, its disks
    perhaps wiped) is told nothing of copies it no longer writes to."""
    host = running_on(ctx.state, record)
    if host is None or record.state is not VmState.RUNNING:
        return
    runtime = ctx.state.runtimes.get(host)
    seen = runtime.observed.get(record.name) if runtime is not None else None
    if seen is not None and seen.generation == record.generation:
        ctx.send(host, list(set_commands(ctx, record)))


def with_copy(record: VmRecord, disk_id: str, host: HostId, copy: CopyRecord) -> list[DiskRecord]:
    """The VM's disks with ``host``'s copy of disk ``disk_id`` replaced by ``copy``."""
    return [
        replace(d, copies=[copy if c.host == host else c for c in d.copies])
        if d.disk_id == disk_id
        else d
        for d in record.disks
    ]
