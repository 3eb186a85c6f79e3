"""Replicated disks in a VM's QEMU: a quorum of NBD clients, one per current copy.

QEMU 7.2 refuses to take a child out of a ``quorum`` whose ``vote-threshold`` equals its number
of children ("The number of children cannot be lower than the vote threshold"), and a
``blockdev-reopen`` that would swap it flushes the failed child first and fails. So a replicated
disk is two quorums (measured, docs/operations.md):

- the device's node ``disk<i>``: an *outer* quorum, ``vote-threshold`` 1, ``read-pattern`` fifo,
  whose one child is
- an *inner* quorum ``d<i>q<seq>``: ``vote-threshold`` = its children, fifo reads (the first
  copy: the VM's own host's when it holds one), children ``d<i>q<seq>c<k>``: NBD clients of the
  copies' exports (export name = disk id).

A guest write completes only when every copy has it. A copy that fails one stops the VM
(device ``werror=stop,rerror=stop``); the failed copy is reported (``QUORUM_REPORT_BAD``) and
dropped only on ``SetDiskReplicas``: a new inner quorum over the copies kept (fresh NBD
connections) is added to the outer one and the old one removed (``x-blockdev-change``), then
``cont`` retries the failed request against the copies kept. A joining copy is brought in step
by ``blockdev-mirror`` (``sync=full``, ``copy-mode=write-blocking``) from ``disk<i>`` into an
NBD client of it; once ready: ``stop``, ``block-job-cancel`` (the target is a consistent copy),
swap in an inner quorum with it, ``cont``.

What the driver holds of each replicated disk (:class:`QuorumDisk`) is kept in ``quorum.json``
beside the VM's ``vm.json``, so a new agent learns the quorum's current children back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from common.errors import DriverError
from common.messages import DiskSpec, VmSpec
from common.replica_messages import DiskReplicas, ReplicaRef, SetDiskReplicas
from common.spec_messages import DiskStorage
from common.waiting import poll
from hostagent.disks import effective_disks
from hostagent.drivers.qemuproc import Drive, VmFiles
from hostagent.drivers.qmp import JsonObject, QmpClient, QmpError

log = logging.getLogger(__name__)

JOIN_POLL_S = 0.1
JOIN_READY_TIMEOUT_S = 3600.0
CANCEL_TIMEOUT_S = 30.0
MIB = 1 << 20


class QuorumDisk(msgspec.Struct, kw_only=True):
    """One replicated disk of a VM as its QEMU holds it now."""

    index: int
    """Its drive index (``disk<index>``)."""
    disk_id: str
    members: list[ReplicaRef]
    """The copies of the current inner quorum, in child order: the VM writes to every one."""
    seq: int = 0
    """Names the current inner quorum (``d<index>q<seq>``)."""
    slot: int = 0
    """Its child name in the outer quorum (``children.<slot>``)."""
    failed: list[str] = []
    """Hosts of members that failed a request: the VM is stopped until they are dropped."""
    joining: dict[str, float] = {}
    """Copies being brought in step (by host), with their progress."""

    def report(self) -> DiskReplicas:
        return DiskReplicas(
            disk_id=self.disk_id,
            in_sync=[m.host for m in self.members],
            joining=dict(self.joining),
            failed=sorted(self.failed),
        )


class QuorumFile(msgspec.Struct, kw_only=True):
    generation: int
    disks: list[QuorumDisk]


def replicated(spec: VmSpec) -> list[tuple[int, DiskSpec]]:
    """The VM's replicated disks with their drive index."""
    return [
        (index, disk)
        for index, disk in enumerate(effective_disks(spec))
        if disk.storage is DiskStorage.REPLICATED
    ]


def initial(spec: VmSpec) -> list[QuorumDisk]:
    """The quorums of a VM about to start: every current copy of its spec."""
    disks = []
    for index, disk in replicated(spec):
        if not disk.replicas:
            raise DriverError(f"replicated disk {disk.disk_id} has no replica", retryable=False)
        disks.append(QuorumDisk(index=index, disk_id=disk.disk_id, members=list(disk.replicas)))
    return disks


def drives(spec: VmSpec, paths: list[Path], disks: list[QuorumDisk]) -> list[Drive]:
    """The VM's disks in drive order: host-local files (``paths``, in order) and the quorums of
    its replicated ones."""
    quorums = {disk.index: blockdev(disk) for disk in disks}
    local = iter(paths)
    return [quorums[i] if i in quorums else next(local) for i in range(len(effective_disks(spec)))]


def inner_name(disk: QuorumDisk, seq: int) -> str:
    return f"d{disk.index}q{seq}"


def nbd_client(node: str, ref: ReplicaRef, disk_id: str) -> JsonObject:
    server: JsonObject = {"type": "inet", "host": ref.address, "port": str(ref.port)}
    return {"driver": "nbd", "node-name": node, "server": server, "export": disk_id}


def inner_quorum(disk: QuorumDisk, seq: int, members: list[ReplicaRef]) -> JsonObject:
    name = inner_name(disk, seq)
    children = [nbd_client(f"{name}c{k}", ref, disk.disk_id) for k, ref in enumerate(members)]
    return {
        "driver": "quorum",
        "node-name": name,
        "vote-threshold": len(members),
        "read-pattern": "fifo",
        "children": children,
    }


def blockdev(disk: QuorumDisk) -> JsonObject:
    """The ``-blockdev`` of the disk: the outer quorum over the current inner one."""
    return {
        "driver": "quorum",
        "node-name": f"disk{disk.index}",
        "vote-threshold": 1,
        "read-pattern": "fifo",
        "children": [inner_quorum(disk, disk.seq, disk.members)],
    }


def failed_host(disks: list[QuorumDisk], node: str) -> tuple[QuorumDisk, str] | None:
    """The disk and host of the inner quorum child ``node`` (``d<i>q<seq>c<k>``), if current."""
    for disk in disks:
        prefix = f"{inner_name(disk, disk.seq)}c"
        if node.startswith(prefix) and node[len(prefix) :].isdigit():
            k = int(node[len(prefix) :])
            if k < len(disk.members):
                return disk, disk.members[k].host
    return None


def save(files: VmFiles, generation: int, disks: list[QuorumDisk]) -> None:
    path = files.dir / "quorum.json"
    partial = path.with_name(".quorum.json.partial")
    partial.write_bytes(msgspec.json.encode(QuorumFile(generation=generation, disks=disks)))
    partial.replace(path)


def load(files: VmFiles, generation: int, spec: VmSpec) -> list[QuorumDisk]:
    """What ``quorum.json`` says of the VM at ``generation``; its spec's copies if nothing."""
    with contextlib.suppress(OSError, msgspec.DecodeError):
        kept = msgspec.json.decode((files.dir / "quorum.json").read_bytes(), type=QuorumFile)
        if kept.generation == generation:
            for disk in kept.disks:
                disk.joining = {}  # a join is not carried over an agent restart: sent again
            return kept.disks
    return initial(spec)


@dataclass(eq=False)
class Quorums:
    """The replicated disks of one running VM, and the changes of their copy sets."""

    name: str
    generation: int
    files: VmFiles
    disks: list[QuorumDisk]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stopped_by_error: bool = False
    """A failed request stopped the VM (``BLOCK_IO_ERROR``, action stop): not a fence."""
    joins: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def notice(self, event: str, data: JsonObject) -> None:
        """A QMP event of the VM's QEMU."""
        if event == "QUORUM_REPORT_BAD":
            found = failed_host(self.disks, str(data.get("node-name", "")))
            if found is not None and found[1] not in found[0].failed:
                found[0].failed.append(found[1])
                log.warning("disk copy failed vm=%s disk_id=%s host=%s data=%s",
                            self.name, found[0].disk_id, found[1], data)  # fmt: skip
        elif event == "BLOCK_IO_ERROR" and data.get("action") == "stop":
            self.stopped_by_error = True

    def report(self) -> list[DiskReplicas]:
        return [disk.report() for disk in self.disks]

    def disk(self, disk_id: str) -> QuorumDisk:
        for disk in self.disks:
            if disk.disk_id == disk_id:
                return disk
        raise DriverError(f"vm {self.name} has no replicated disk {disk_id}", retryable=False)

    def save(self) -> None:
        save(self.files, self.generation, self.disks)

    async def swap(self, qmp: QmpClient, disk: QuorumDisk, members: list[ReplicaRef]) -> None:
        """Make ``members`` the disk's copies: a new inner quorum replaces the current one."""
        seq = disk.seq + 1
        await qmp.execute("blockdev-add", inner_quorum(disk, seq, members), timeout_s=30)
        outer = f"disk{disk.index}"
        await qmp.execute("x-blockdev-change", {"parent": outer, "node": inner_name(disk, seq)})
        await qmp.execute("x-blockdev-change", {"parent": outer, "child": f"children.{disk.slot}"})
        with contextlib.suppress(QmpError):  # only one added by blockdev-add is the monitor's
            await qmp.execute("blockdev-del", {"node-name": inner_name(disk, disk.seq)})
        hosts = {m.host for m in members}
        disk.members, disk.seq, disk.slot = list(members), seq, disk.slot + 1
        disk.failed = [host for host in disk.failed if host in hosts]
        self.save()
        log.info("disk copies now vm=%s disk_id=%s hosts=%s", self.name, disk.disk_id,
                 [m.host for m in members])  # fmt: skip


async def continue_if_done(qmp: QmpClient, quorums: Quorums) -> None:
    """A VM stopped by a failed copy goes on once no disk has a failed copy left."""
    if any(disk.failed for disk in quorums.disks):
        return
    if await qmp.query_status() == "io-error":
        await qmp.execute("cont")
        log.info("vm continues, failed copies dropped vm=%s", quorums.name)
    quorums.stopped_by_error = False


async def join(qmp: QmpClient, quorums: Quorums, disk: QuorumDisk, ref: ReplicaRef,
               speed_mib_s: float) -> None:  # fmt: skip
    """Bring ``ref`` in step with the disk by a write-blocking mirror, then add it."""
    target = f"d{disk.index}j{ref.host}"[:31]
    job = f"join-{disk.index}-{ref.host}"
    try:
        await qmp.execute("blockdev-add", nbd_client(target, ref, disk.disk_id), timeout_s=30)
        await qmp.execute("blockdev-mirror", {
            "job-id": job, "device": f"disk{disk.index}", "target": target, "sync": "full",
            "copy-mode": "write-blocking", "speed": int(speed_mib_s * MIB),
            "auto-dismiss": True,
        })  # fmt: skip
        await _until_ready(qmp, job, disk, ref.host)
        async with quorums.lock:
            was_running = await qmp.query_status() == "running"
            if was_running:
                await qmp.execute("stop")
            try:
                await qmp.execute("block-job-cancel", {"device": job})
                await _until_gone(qmp, job)
                await qmp.execute("blockdev-del", {"node-name": target})
                await quorums.swap(qmp, disk, [*disk.members, ref])
            finally:
                if was_running:
                    await qmp.execute("cont")
    except (QmpError, DriverError, TimeoutError) as exc:
        log.error("disk copy not joined vm=%s disk_id=%s host=%s error=%s",
                  quorums.name, disk.disk_id, ref.host, exc)  # fmt: skip
        with contextlib.suppress(QmpError):
            await qmp.execute("block-job-cancel", {"device": job, "force": True})
        with contextlib.suppress(QmpError, TimeoutError):
            await _until_gone(qmp, job)
            await qmp.execute("blockdev-del", {"node-name": target})
    finally:
        disk.joining.pop(ref.host, None)


async def _until_ready(qmp: QmpClient, job: str, disk: QuorumDisk, host: str) -> None:
    async with asyncio.timeout(JOIN_READY_TIMEOUT_S):
        while True:
            found = await _job(qmp, job)
            if found is None:
                raise DriverError(f"mirror {job} ended before it was in step", retryable=True)
            total = int(str(found.get("len", 0)) or 0)
            done = int(str(found.get("offset", 0)) or 0)
            disk.joining[host] = min(done / total, 1.0) if total else 0.0
            if found.get("ready"):
                disk.joining[host] = 1.0
                return
            await asyncio.sleep(JOIN_POLL_S)


async def _until_gone(qmp: QmpClient, job: str) -> None:
    async def gone() -> bool | None:
        return True if await _job(qmp, job) is None else None

    if await poll(gone, timeout_s=CANCEL_TIMEOUT_S, interval_s=0.005) is None:
        raise DriverError(f"block job {job} did not end", retryable=True)


async def _job(qmp: QmpClient, job: str) -> JsonObject | None:
    jobs = await qmp.execute("query-block-jobs")
    if not isinstance(jobs, list):
        return None
    return next((j for j in jobs if isinstance(j, dict) and j.get("device") == job), None)


async def set_replicas(qmp: QmpClient, quorums: Quorums, command: SetDiskReplicas) -> None:
    """Drop the copies ``command`` does not name (then let the VM go on if a failed copy had
    stopped it and none is left), and start bringing its joining copies in step."""
    disk = quorums.disk(command.disk_id)
    wanted = {ref.host for ref in command.replicas}
    async with quorums.lock:
        kept = [member for member in disk.members if member.host in wanted]
        if not kept:
            raise DriverError(
                f"disk {disk.disk_id} would have no copy left: none of {sorted(wanted)} is "
                f"one of its copies {[m.host for m in disk.members]}",
                retryable=False,
            )
        if kept != disk.members:
            await quorums.swap(qmp, disk, kept)
        await continue_if_done(qmp, quorums)
    for ref in command.joining:
        if ref.host in wanted | set(disk.joining) or ref.host in {m.host for m in disk.members}:
            continue
        disk.joining[ref.host] = 0.0
        task = asyncio.create_task(
            join(qmp, quorums, disk, ref, command.speed_mib_s),
            name=f"qemu-join-{quorums.name}-{disk.index}-{ref.host}",
        )
        quorums.joins[f"{disk.index}-{ref.host}"] = task
