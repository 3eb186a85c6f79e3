"""Live migration between two QEMU processes, over QMP: the destination's side (wait for the
state, export the disks over NBD) and the source's (mirror the disks, send the memory, hand
over), as libvirt's copy-storage migration does it.

Destination (started with ``-S -incoming defer``, so it never runs by itself):
``migrate-incoming tcp:ADDR:0`` (QEMU binds a free port and names it in ``query-migrate``), then
``nbd-server-start`` on a port tried at random in ``NBD_PORTS`` until QEMU's own bind succeeds
(no port is chosen by a probe that another process could take before QEMU binds it; a port in
use costs one more try), and ``block-export-add`` of every disk, writable, named by its disk id.

Source: per disk, ``blockdev-add`` of an NBD client node for the destination's export and
``blockdev-mirror`` into it with ``sync=top`` (an OS disk is a qcow2 overlay of the image both
hosts hold, so only the overlay's own clusters travel; a data disk has no backing file, so top
is all of it) in ``COPY_MODE``. Once every job is ``ready``: ``migrate`` with the capability
``pause-before-switchover``: QEMU pauses the guest for the last round and waits in
``pre-switchover``; the mirrors are then completed without a pivot (``block-job-cancel`` of a
ready job copies what is still in flight and leaves the target a point-in-time copy), and only
then ``migrate-continue`` sends the device state. The destination's disks are complete before
its QEMU has the state it needs to run, and the source's disks are never inactivated under a
running job.

Every wait is bounded: ``BASE_S`` plus the data to send at ``FLOOR_MIB_S`` (or the bandwidth
cap, if lower), see :func:`deadlines`. Any failure or a cancel before ``migrate-continue`` ends
in :func:`abort`: migration cancelled, jobs cancelled (``force``), NBD nodes removed; the caller
makes sure the guest runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from common.errors import DriverError
from common.waiting import poll
from hostagent.drivers.base import IncomingEndpoint, MigrationProgress
from hostagent.drivers.qmp import JsonObject, QmpClient, QmpError

T = TypeVar("T")

ARRIVE_S = 5.0
"""How long ``finish_incoming`` waits for a destination still loading the state it received."""
ARRIVE_POLL_S = 0.25
"""How often the destination's status is read while no event comes (its QEMU's ``MIGRATION``
event says when the state is in: the wait is for the event, this is only a safety net)."""

COPY_MODE = "background"
"""Not ``write-blocking``, though it guarantees that the mirror converges (each guest write
reaches both copies before it completes): QEMU 7.2 cannot switch a running job to it once ready
(``block-job-change`` came later), and from the start it stalls the guest. The destination's
NBD server shares its main loop with the incoming migration, which keeps that loop busy while
the memory arrives, so every guest write waits: a guest writing and syncing every few ms made
no progress at all for ~0.8 s of a 96 MiB guest's pre-copy (1 s between ticks on the console,
against 0.5 s in background mode, measured under TCG on a busy 2-core host). In background mode
what the guest wrote since the mirror's last pass is copied while it is paused, before the
switchover (a few ms here); a guest that writes faster than the link can copy makes that pause
longer, up to ``SWITCH_S``, after which the migration fails and the guest runs on."""

BASE_S = 30.0
FLOOR_MIB_S = 8
"""The slowest copy rate a migration is given time for (TCG on a busy 2-core host does ~100)."""
SWITCH_S = 30.0
"""From ``pre-switchover`` to ``completed``: the last mirror writes and the device state."""
ABORT_S = 15.0
PROGRESS_S = 0.25
"""How often progress is read when no event comes."""
FIRST_DOWNTIME_MS = 16
"""QEMU's ``downtime-limit`` (the pause it may plan for the last round) for the first two
passes; raised from then on, doubling at every pass, up to the configured maximum (as Nova's
``live_migration_downtime_steps`` do). With the maximum from the start, QEMU stopped a 96 MiB
TCG guest for up to 96 ms whenever its estimate let it, on top of the switchover's own trip
and the destination's first instructions: a guest that converges now stops for its last
small round only, and one that does not still gets the whole allowance after a few passes."""
NBD_PORTS = (20000, 32767)
"""Below Linux's ephemeral range (32768-60999), where outgoing connections take their ports."""
NBD_PORT_TRIES = 32
NO_CAP_BYTES_S = 1 << 40
"""QEMU's ``max-bandwidth`` when no cap is asked (its default is 128 MiB/s)."""
MIB = 1 << 20
DONE = frozenset({"completed", "failed", "cancelled"})
"""``query-migrate`` statuses after which nothing more happens."""


def drive(index: int) -> str:
    return f"disk{index}"  # the -drive ids of qemuproc.qemu_args


def job_id(index: int) -> str:
    return f"mig-job-{index}"


def nbd_node(index: int) -> str:
    return f"mig-nbd-{index}"


def export_id(index: int) -> str:
    return f"mig-export-{index}"


class MigrationCancelled(DriverError):
    def __init__(self) -> None:
        super().__init__("migration cancelled", retryable=True)


@dataclass(eq=False)
class Outgoing:
    """A live migration under way from this host: what it sends and how far it is."""

    target: IncomingEndpoint
    disk_ids: list[str]
    """In drive order (``disk0`` first); "" for a replicated disk, which is not copied: both
    QEMUs open the same copies (hostagent/drivers/qemuquorum.py)."""
    disk_mib: int
    mem_mib: int
    max_downtime_ms: int
    max_bandwidth_mib_s: int
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by every migration or block job event (and a cancel): the waits look again."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    committed: bool = False
    """``migrate-continue`` was sent: the outcome is QEMU's, a cancel comes too late."""
    job_errors: dict[str, str] = field(default_factory=dict)
    progress: MigrationProgress = field(default_factory=lambda: MigrationProgress(0, 0))
    disks_sent_mib: int = 0
    began_s: float = field(default_factory=time.monotonic)
    phases_ms: dict[str, int] = field(default_factory=dict)
    """When each phase was reached, in ms since the start (logged with the outcome)."""
    downtime_ms: int = 0
    """QEMU's own measure of the guest's pause (``query-migrate`` ``downtime``)."""
    status: str = ""
    """The migration's status as its last ``MIGRATION`` event told it."""
    passes: int = 0
    """The memory passes so far (``MIGRATION_PASS``)."""
    limit_ms: int = 0
    """The ``downtime-limit`` QEMU was last given."""

    @property
    def copied(self) -> list[int]:
        """The drive indexes of the disks the migration copies."""
        return [index for index, disk_id in enumerate(self.disk_ids) if disk_id]

    def reached(self, phase: str) -> None:
        self.phases_ms[phase] = round((time.monotonic() - self.began_s) * 1000)

    def notice(self, event: str, data: JsonObject) -> None:
        """A QMP event of the VM's QEMU."""
        if event == "BLOCK_JOB_COMPLETED" and (error := data.get("error")):
            self.job_errors[str(data.get("device"))] = str(error)
        elif event == "MIGRATION":
            self.status = str(data.get("status", ""))
        elif event == "MIGRATION_PASS":
            self.passes = _int(data.get("pass"))
        self.changed.set()

    def cancel(self) -> None:
        self.cancelled = True
        self.changed.set()


@dataclass(eq=False)
class Arrival:
    """The destination's incoming migration, as its QEMU's events tell it."""

    status: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notice(self, event: str, data: JsonObject) -> None:
        if event == "MIGRATION":
            self.status = str(data.get("status", ""))
            self.changed.set()


def downtime_limit_ms(max_ms: int, passes: int) -> int:
    """QEMU's ``downtime-limit`` after ``passes`` memory passes (``FIRST_DOWNTIME_MS``)."""
    return min(max_ms, FIRST_DOWNTIME_MS << min(max(0, passes - 2), 16))


def deadlines(out: Outgoing) -> tuple[float, float]:
    """Seconds allowed for the disks to be in step, and then for the memory's pre-copy."""
    floor = FLOOR_MIB_S
    if out.max_bandwidth_mib_s:
        floor = min(floor, max(1, out.max_bandwidth_mib_s // 2))
    return BASE_S + out.disk_mib / floor, BASE_S + 4 * out.mem_mib / floor


def uri(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"tcp:{host}:{port}"


async def _qmp(qmp: QmpClient, command: str, arguments: JsonObject | None = None) -> object:
    try:
        return await qmp.execute(command, arguments)
    except QmpError as exc:
        raise DriverError(f"migration: {exc}", retryable=True) from exc


def _dicts(value: object) -> list[JsonObject]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _dict(value: object) -> JsonObject:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


# ----------------------------------------------------------------------- destination


async def open_incoming(qmp: QmpClient, address: str, disk_ids: list[str]) -> IncomingEndpoint:
    """Listen for the state on ``address`` and export the disks (drive ``i`` as ``disk_ids[i]``)."""
    await _qmp(qmp, "migrate-set-capabilities", {"capabilities": [_cap("events")]})
    await _qmp(qmp, "migrate-incoming", {"uri": uri(address, 0)})
    sockets = _dicts(_dict(await _qmp(qmp, "query-migrate")).get("socket-address"))
    if not sockets or not str(sockets[0].get("port", "")).isdigit():
        raise DriverError("qemu did not say where it listens for the migration", retryable=True)
    migration_port = int(str(sockets[0]["port"]))
    nbd_port = await _start_nbd(qmp, address)
    nodes = {
        str(block.get("device")): str(_dict(block.get("inserted")).get("node-name"))
        for block in _dicts(await _qmp(qmp, "query-block"))
    }
    for index, disk_id in enumerate(disk_ids):
        if not disk_id:
            continue  # replicated: the destination opened the same copies as the source
        export: JsonObject = {"type": "nbd", "id": export_id(index), "name": disk_id}
        export |= {"node-name": nodes.get(drive(index), ""), "writable": True}
        await _qmp(qmp, "block-export-add", export)
    return IncomingEndpoint(address, migration_port, nbd_port)


async def _start_nbd(qmp: QmpClient, address: str) -> int:
    for _ in range(NBD_PORT_TRIES):
        port = random.randint(*NBD_PORTS)
        server = {"type": "inet", "data": {"host": address, "port": str(port)}}
        try:
            await qmp.execute("nbd-server-start", {"addr": server})
        except QmpError as exc:
            if "in use" not in str(exc):
                raise DriverError(f"cannot export the disks: {exc}", retryable=True) from exc
            continue
        return port
    raise DriverError(f"no free NBD port on {address} in {NBD_PORT_TRIES} tries", retryable=True)


async def wait_arrived(qmp: QmpClient, arrival: Arrival) -> None:
    """Until the state arrived completely (``DriverError`` if it did not).

    The source reports ``completed`` once it has sent the last byte; the destination may still
    be loading the device state for a few milliseconds. While it is (``active``), wait up to
    ``ARRIVE_S`` for its ``MIGRATION`` event rather than refuse: a refusal costs the switchover
    a command retry (3 s). Most often the event came before the scheduler's word: no query.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ARRIVE_S
    while True:
        arrival.changed.clear()
        status = arrival.status
        if status != "completed":
            status = str(_dict(await _qmp(qmp, "query-migrate")).get("status"))
        left = deadline - loop.time()
        if status != "active" or left <= 0:
            break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(ARRIVE_POLL_S, left)):
                await arrival.changed.wait()
    if status != "completed":
        raise DriverError(f"the vm's state has not fully arrived (status {status})", retryable=True)


async def run_arrived(qmp: QmpClient, disk_count: int) -> None:
    """Stop exporting the disks and let the VM run. The commands go out back to back, each
    without waiting for the answer to the one before (QEMU runs them in order, so the exports
    are gone before the guest's first instruction): the guest waits for one round trip, not
    one per command. A failed ``cont`` is a ``DriverError``; a failed export removal is not
    (gone already: a finish repeated)."""
    commands: list[tuple[str, JsonObject | None]] = [
        ("block-export-del", {"id": export_id(index), "mode": "hard"})
        for index in range(disk_count)
    ]
    commands += [("nbd-server-stop", None), ("cont", None)]
    # Tasks start in the order they are made; each writes its command before its first await.
    sent = [asyncio.ensure_future(qmp.execute(name, arguments)) for name, arguments in commands]
    answers = await asyncio.gather(*sent, return_exceptions=True)
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, QmpError):
            raise answer
    if isinstance(cont := answers[-1], QmpError):
        raise DriverError(f"qmp cont failed: {cont}", retryable=True) from cont


def _cap(name: str, state: bool = True) -> JsonObject:
    return {"capability": name, "state": state}


# ----------------------------------------------------------------------- source


async def send(qmp: QmpClient, out: Outgoing) -> None:
    """Mirror the disks, send the memory, hand over; returns once the migration completed."""
    disks_s, memory_s = deadlines(out)
    caps = [_cap("events"), _cap("pause-before-switchover")]
    await _qmp(qmp, "migrate-set-capabilities", {"capabilities": caps})
    await _start_mirrors(qmp, out)
    await _until(out, lambda: _mirrors_ready(qmp, out), disks_s, "disks in step")
    out.reached("disks_ready")
    out.limit_ms = downtime_limit_ms(out.max_downtime_ms, 0)
    parameters: JsonObject = {"downtime-limit": out.limit_ms}
    parameters["max-bandwidth"] = out.max_bandwidth_mib_s * MIB or NO_CAP_BYTES_S
    await _qmp(qmp, "migrate-set-parameters", parameters)
    await _qmp(qmp, "migrate", {"uri": uri(out.target.address, out.target.migration_port)})
    await _until(out, lambda: _precopy(qmp, out), memory_s, "memory sent")
    out.reached("paused")  # from here on the guest waits: no query that is not needed
    if out.copied:
        for index in out.copied:
            await _qmp(qmp, "block-job-cancel", {"device": job_id(index)})
        await _until(out, lambda: _mirrors_done(qmp, out), SWITCH_S, "disks completed")
    out.reached("disks_done")
    if out.cancelled:
        raise MigrationCancelled
    out.committed = True
    await _qmp(qmp, "migrate-continue", {"state": "pre-switchover"})
    await _until(out, lambda: _migration(qmp, out, "completed"), SWITCH_S, "switchover")
    out.reached("completed")


async def release(qmp: QmpClient, out: Outgoing) -> None:
    """After the hand-over, off the switchover's path: QEMU's measure of the pause is read and
    the NBD client nodes are removed (the source's QEMU is about to be destroyed anyway)."""
    with contextlib.suppress(QmpError):
        out.downtime_ms = _int(_dict(await qmp.execute("query-migrate")).get("downtime"))
    for index in out.copied:
        with contextlib.suppress(QmpError):
            await qmp.execute("blockdev-del", {"node-name": nbd_node(index)})


async def _start_mirrors(qmp: QmpClient, out: Outgoing) -> None:
    server: JsonObject = {"type": "inet", "host": out.target.address}
    server["port"] = str(out.target.nbd_port)
    for index in out.copied:
        disk_id = out.disk_ids[index]
        with contextlib.suppress(QmpError):  # left by an attempt whose clean-up failed
            await qmp.execute("blockdev-del", {"node-name": nbd_node(index)})
        node: JsonObject = {"driver": "nbd", "node-name": nbd_node(index), "export": disk_id}
        await _qmp(qmp, "blockdev-add", node | {"server": server})
        mirror: JsonObject = {"job-id": job_id(index), "device": drive(index)}
        mirror |= {"target": nbd_node(index), "sync": "top", "copy-mode": COPY_MODE}
        if out.max_bandwidth_mib_s:
            mirror["speed"] = out.max_bandwidth_mib_s * MIB
        await _qmp(qmp, "blockdev-mirror", mirror)


async def _until(
    out: Outgoing, check: Callable[[], Awaitable[T | None]], timeout_s: float, what: str
) -> T:
    """Until ``check`` returns a value, looking again at every event (or ``PROGRESS_S``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        out.changed.clear()
        if out.cancelled and not out.committed:
            raise MigrationCancelled
        result = await check()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DriverError(f"migration: {what} not reached in {timeout_s:.0f}s", retryable=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(PROGRESS_S, remaining)):
                await out.changed.wait()


async def _jobs(qmp: QmpClient, out: Outgoing) -> dict[str, JsonObject]:
    if out.job_errors:
        raise DriverError(f"disk copy failed: {out.job_errors}", retryable=True)
    mine = {job_id(index) for index in out.copied}
    jobs = _dicts(await _qmp(qmp, "query-block-jobs"))
    return {str(job.get("device")): job for job in jobs if job.get("device") in mine}


async def _mirrors_ready(qmp: QmpClient, out: Outgoing) -> bool | None:
    jobs = await _jobs(qmp, out)
    if len(jobs) < len(out.copied):
        raise DriverError("a disk copy ended before it was in step", retryable=True)
    out.disks_sent_mib = sum(_int(job.get("offset")) for job in jobs.values()) // MIB
    total_mib = sum(_int(job.get("len")) for job in jobs.values()) // MIB
    out.progress = MigrationProgress(out.disks_sent_mib, total_mib + out.mem_mib)
    return True if all(job.get("ready") for job in jobs.values()) else None


async def _mirrors_done(qmp: QmpClient, out: Outgoing) -> bool | None:
    return None if await _jobs(qmp, out) else True


async def _precopy(qmp: QmpClient, out: Outgoing) -> bool | None:
    """The memory's pre-copy: the downtime limit raised as the passes go by; done once QEMU
    paused the guest before the switchover."""
    limit_ms = downtime_limit_ms(out.max_downtime_ms, out.passes)
    if limit_ms != out.limit_ms:
        await _qmp(qmp, "migrate-set-parameters", {"downtime-limit": limit_ms})
        out.limit_ms = limit_ms
    return await _migration(qmp, out, "pre-switchover")


async def _migration(qmp: QmpClient, out: Outgoing, wanted: str) -> bool | None:
    if out.status == wanted:  # its event said so: no query (the guest may be waiting)
        return True
    info = _dict(await _qmp(qmp, "query-migrate"))
    status = str(info.get("status"))
    ram = _dict(info.get("ram"))
    if ram:
        total = out.progress.total_mib - out.mem_mib + _int(ram.get("total")) // MIB
        sent = out.disks_sent_mib + _int(ram.get("transferred")) // MIB
        out.progress = MigrationProgress(sent, max(total, sent))
    if status == wanted:
        out.downtime_ms = _int(info.get("downtime"))
        return True
    if status in DONE:
        detail = info.get("error-desc", "")
        raise DriverError(f"migration {status} {detail}".strip(), retryable=True)
    return None


async def abort(qmp: QmpClient, out: Outgoing) -> str:
    """End the migration without a switchover; the final ``query-migrate`` status (a migration
    that completed anyway reports ``completed``: the VM was handed over after all)."""
    with contextlib.suppress(QmpError):
        await qmp.execute("migrate_cancel")
    status = await _settle(qmp)
    if status == "completed":
        return status
    mine = {job_id(index) for index in out.copied}

    async def jobs_gone() -> bool | None:
        jobs = _dicts(await qmp.execute("query-block-jobs"))
        return None if any(job.get("device") in mine for job in jobs) else True

    with contextlib.suppress(QmpError):
        for job in _dicts(await qmp.execute("query-block-jobs")):
            if job.get("device") in mine:
                await qmp.execute("block-job-cancel", {"device": job["device"], "force": True})
        await poll(jobs_gone, timeout_s=ABORT_S, interval_s=0.02)
        for index in out.copied:
            with contextlib.suppress(QmpError):
                await qmp.execute("blockdev-del", {"node-name": nbd_node(index)})
    return status


async def _settle(qmp: QmpClient) -> str:
    """Wait (bounded) until the migration is no longer under way; its status."""
    seen = ["unknown"]

    async def settled() -> bool | None:
        seen[0] = str(_dict(await qmp.execute("query-migrate")).get("status", "none"))
        return True if seen[0] in DONE or seen[0] == "none" else None

    with contextlib.suppress(QmpError):
        await poll(settled, timeout_s=ABORT_S, interval_s=0.02)
    return seen[0]
