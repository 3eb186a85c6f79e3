"""Live migration in the QEMU driver (``MigratingDriver``): what the driver does with its VMs;
the QMP flows themselves are in hostagent/drivers/qemuflows.py.

A base of :class:`hostagent.drivers.qemu.QemuDriver`, built on
:class:`hostagent.drivers.qemuhost.QemuHost`. The destination's VM is launched like a
start (same disks, NICs and device models: the migration stream needs them identical) with
``-S -incoming defer``: it never runs by itself, only on ``finish_incoming``. Its disks are made
afresh (an OS disk: a qcow2 overlay of the image; a data disk: empty at its size); a copy kept
here by an earlier stop is removed first, since the mirror copies only what the source's
overlay holds and must not mix with stale clusters.

Fencing: pausing an ``incoming`` or ``handed_over`` VM does nothing (neither executes). A source
paused by the fence watchdog during a migration stays paused whatever the outcome.

Agent restart (adoption, :func:`settle_adopted`): an incoming VM is held as
``incoming`` again (its endpoint is in ``vm.json``), or as running if it had been let run; a
source whose QEMU reports ``postmigrate`` is held as ``handed_over``; a migration found under way
(its mirror jobs or QEMU's migration, which went on without the agent but stops before the
switchover, ``pause-before-switchover``) is cancelled and the VM held ``paused``: the scheduler
resumes it at its generation if it is still the VM's copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from pathlib import Path

from common.errors import DriverError
from common.messages import VmSpec
from common.spec_messages import DiskStorage
from hostagent.disks import effective_disks
from hostagent.drivers.base import IncomingEndpoint, MigrationProgress
from hostagent.drivers.qemuflows import (
    ABORT_S,
    SWITCH_S,
    Outgoing,
    abort,
    job_id,
    open_incoming,
    release,
    run_arrived,
    send,
    wait_arrived,
)
from hostagent.drivers.qemuhost import QemuHost
from hostagent.drivers.qemunics import plug
from hostagent.drivers.qemuproc import (
    IncomingMeta,
    VmMeta,
    launch,
    write_meta,
)
from hostagent.drivers.qemuvm import QemuVm, admit
from hostagent.drivers.qmp import QmpError

log = logging.getLogger(__name__)

UNDER_WAY = frozenset(
    {"setup", "active", "pre-switchover", "device", "cancelling", "postcopy-active", "wait-unplug"}
)
"""``query-migrate`` statuses of a migration still going on."""


def copied_disk_ids(spec: VmSpec) -> list[str]:
    """The VM's disks as a live migration sees them, in drive order: a host-local disk's id
    (copied to the destination), "" for a replicated disk (both QEMUs open the same copies; the
    source's nodes are inactivated at the switchover, so only one ever writes)."""
    return [
        "" if disk.storage is DiskStorage.REPLICATED else disk.disk_id
        for disk in effective_disks(spec)
    ]


def incoming_of(meta: VmMeta) -> IncomingEndpoint | None:
    if meta.incoming is None:
        return None
    return IncomingEndpoint(
        meta.incoming.address, meta.incoming.migration_port, meta.incoming.nbd_port
    )


def _listen_address(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise DriverError(
            f"invalid listen address {address!r}: an IP address is needed", retryable=False
        ) from None


def _same_attempt(held: QemuVm, generation: int) -> IncomingEndpoint:
    """A repeated ``prepare_incoming``: the endpoint, if ``held`` is that very attempt."""
    name = held.spec.name
    if held.incoming is None:
        raise DriverError(f"vm {name} already runs on this host", retryable=False)
    if held.generation != generation:
        raise DriverError(
            f"vm {name} waits here as attempt {held.generation}, not {generation}", retryable=True
        )
    if not held.incoming.migration_port:
        raise DriverError(f"vm {name} is still being prepared", retryable=True)
    return held.incoming


def _check_can_send(vm: QemuVm) -> None:
    name = vm.spec.name
    if vm.incoming is not None:
        raise DriverError(f"vm {name} is waiting for its state here", retryable=False)
    if vm.failure or vm.stopping:
        raise DriverError(f"vm {name} is not running here", retryable=False)
    if vm.outgoing is not None:
        raise DriverError(f"vm {name} is already being sent", retryable=True)
    if vm.unreachable or vm.qmp is None or vm.qmp.closed.is_set():
        raise DriverError(f"qemu of vm {name} is unreachable", retryable=True)
    if vm.paused:
        raise DriverError(f"vm {name} is paused (fenced): not sent", retryable=True)
    if not vm.booted:
        raise DriverError(f"vm {name} has not booted yet", retryable=True)


async def settle_adopted(vm: QemuVm, status: str) -> None:
    """After an agent restart: take up the adopted VM's part in a migration (module docstring;
    hostagent/drivers/qemuadopt.py calls it)."""
    assert vm.qmp is not None
    if vm.incoming is not None:
        if status == "running":  # let run just before the restart
            vm.incoming, vm.arrived, vm.booted = None, True, True
        return
    if status == "postmigrate":
        vm.handed_over = True
        return
    info = await vm.qmp.execute("query-migrate")
    under_way = isinstance(info, dict) and info.get("status") in UNDER_WAY
    disk_ids = copied_disk_ids(vm.spec)
    mine = {job_id(index) for index, disk_id in enumerate(disk_ids) if disk_id}
    jobs = await vm.qmp.execute("query-block-jobs")
    if not under_way and not any(
        isinstance(job, dict) and job.get("device") in mine
        for job in (jobs if isinstance(jobs, list) else [])
    ):
        return
    out = Outgoing(IncomingEndpoint("", 0, 0), disk_ids, 0, 0, 1, 0)
    if await abort(vm.qmp, out) == "completed":
        vm.handed_over = True
        return
    vm.paused = True  # before the STOP event, which is no fence
    await vm.qmp.execute("stop")
    log.warning("vm migration found under way at adoption cancelled vm=%s", vm.spec.name)


class QemuMigrations(QemuHost):
    """``MigratingDriver`` for the QEMU driver, which inherits it."""

    # ------------------------------------------------------------------ destination

    async def prepare_incoming(
        self, spec: VmSpec, generation: int, listen_address: str
    ) -> IncomingEndpoint:
        if (held := self.vms.get(spec.name)) is not None:
            return _same_attempt(held, generation)
        address = _listen_address(listen_address)
        admit(spec, self.vms.values(), self.capacity, self.cpu_overcommit)
        vm = QemuVm(spec, generation, self.files(spec.name), paused=True)
        vm.incoming = IncomingEndpoint(address, 0, 0)  # incoming (holding resources) at once
        self.vms[spec.name] = vm
        disk_ids = copied_disk_ids(spec)
        created: list[Path] = []
        try:
            self.disks.remove([d for d in disk_ids if d])  # a copy kept by a stop here is stale
            paths, created = await self.prepare_disks(vm)
            if self.settings.nics:
                await plug(self.host_commands, spec)
            vm.pid = await launch(self.settings, spec, vm.files, paths, ("-incoming", "defer"))
            await self.attach(vm)
            assert vm.qmp is not None
            vm.incoming = await open_incoming(vm.qmp, address, disk_ids)
            self._write_meta(vm)
        except (DriverError, QmpError, asyncio.CancelledError) as exc:
            await self.abandon(vm, created, exc)
            if isinstance(exc, QmpError):
                raise DriverError(f"cannot prepare vm {spec.name}: {exc}", retryable=True) from exc
            raise
        log.info(
            "vm incoming vm=%s generation=%d pid=%d endpoint=%s",
            spec.name,
            generation,
            vm.pid,
            vm.incoming,
        )
        return vm.incoming

    def _write_meta(self, vm: QemuVm) -> None:
        incoming = vm.incoming
        write_meta(
            vm.files,
            VmMeta(
                spec=vm.spec,
                generation=vm.generation,
                accel=self.settings.accel,
                incoming=None
                if incoming is None
                else IncomingMeta(
                    address=incoming.address,
                    migration_port=incoming.migration_port,
                    nbd_port=incoming.nbd_port,
                ),
                arrived=vm.arrived,
            ),
        )

    async def finish_incoming(self, name: str) -> None:
        vm = self.get(name)
        if vm.incoming is None:
            if vm.arrived:
                return  # finished already
            raise DriverError(f"vm {name} is not waiting for its state here", retryable=False)
        if vm.unreachable or vm.qmp is None:
            raise DriverError(f"qemu of vm {name} is unreachable", retryable=True)
        await wait_arrived(vm.qmp, vm.arrival)
        vm.incoming, vm.arrived, vm.booted, vm.finishing = None, True, True, True
        self._write_meta(vm)
        try:
            await run_arrived(vm.qmp, len(effective_disks(vm.spec)))  # exports closed, it runs
            vm.paused = False
        finally:
            vm.finishing = False
        log.info("vm arrived vm=%s generation=%d", name, vm.generation)

    # ------------------------------------------------------------------ source

    async def migrate_out(
        self,
        name: str,
        target: IncomingEndpoint,
        *,
        max_downtime_ms: int,
        max_bandwidth_mib_s: int,
    ) -> None:
        vm = self.get(name)
        if vm.handed_over:
            return
        _check_can_send(vm)
        assert vm.qmp is not None
        disk_ids = copied_disk_ids(vm.spec)
        paths = [self.disks.path(disk_id) for disk_id in disk_ids if disk_id]
        disk_mib = sum(path.stat().st_size for path in paths if path.exists()) >> 20
        out = Outgoing(
            target, disk_ids, disk_mib, vm.spec.mem_mib,
            max_downtime_ms, max_bandwidth_mib_s,
        )  # fmt: skip
        vm.outgoing = out
        log.info("vm migrating vm=%s target=%s disk_mib=%d", name, target, disk_mib)
        outcome, error = "failed", None
        try:
            await send(vm.qmp, out)
            outcome = "completed"
        except (DriverError, QmpError) as exc:
            error = exc
            outcome = await self._abort_out(vm, out)
        except asyncio.CancelledError:
            if await self._abort_out(vm, out) == "completed":
                self._hand_over(vm)
            raise
        finally:
            vm.outgoing = None
            out.done.set()
        if outcome != "completed":
            raise DriverError(f"migration of vm {name} failed: {error}", retryable=True) from error
        self._hand_over(vm)  # at once: the switchover waits for this host's report
        self.spawn(vm, self._sent(vm, out), "sent")

    async def _sent(self, vm: QemuVm, out: Outgoing) -> None:
        """After the hand-over: what is left to do and to log (not on the switchover's path)."""
        assert vm.qmp is not None
        await release(vm.qmp, out)
        log.info(
            "vm sent vm=%s phases_ms=%s qemu_downtime_ms=%d",
            vm.spec.name,
            out.phases_ms,
            out.downtime_ms,
        )

    def _hand_over(self, vm: QemuVm) -> None:
        vm.handed_over = True
        log.info("vm handed over vm=%s generation=%d", vm.spec.name, vm.generation)
        self.on_change()

    async def _abort_out(self, vm: QemuVm, out: Outgoing) -> str:
        """End ``out`` without a switchover; the VM runs here again (unless it was fenced
        meanwhile: then it stays paused). The final migration status."""
        assert vm.qmp is not None
        status = await abort(vm.qmp, out)
        if status == "completed":
            return status
        log.warning("vm migration aborted vm=%s status=%s", vm.spec.name, status)
        try:
            running = await vm.qmp.query_status() == "running"
            if vm.paused and running:
                await vm.qmp.execute("stop")  # fenced while QEMU had it stopped for the switch
            elif not vm.paused and not running:
                await vm.qmp.execute("cont")
        except QmpError as exc:
            log.error("vm not resumed after a failed migration vm=%s error=%s", vm.spec.name, exc)
            vm.paused = True
        return status

    def migration_progress(self, name: str) -> MigrationProgress | None:
        vm = self.vms.get(name)
        return None if vm is None or vm.outgoing is None else vm.outgoing.progress

    async def cancel_migration(self, name: str) -> None:
        vm = self.vms.get(name)
        out = None if vm is None else vm.outgoing
        if vm is None or out is None or out.committed:
            return
        out.cancel()
        if vm.qmp is not None:
            with contextlib.suppress(QmpError):
                await vm.qmp.execute("migrate_cancel")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * ABORT_S + SWITCH_S):
                await out.done.wait()
