"""The real hypervisor driver: one detached ``qemu-system-x86_64`` per VM, driven over QMP.

State comes from QEMU itself: the QMP connection of each VM (a closed socket means the process
is gone) and process liveness; a VM has booted once its guest printed the readiness marker on
the serial console. Boots wait for one of ``max_concurrent_boots`` slots (a boot costs seconds
of CPU under TCG), so a burst of starts, such as a failover onto this host, is queued instead of
overloading it. Disks are host-local qcow2 files (``hostagent/disks.py``): kept by ``stop``,
removed by ``destroy``. NICs are taps on the bridges of their networks, made before the launch
and removed with the VM (``hostagent/drivers/qemunics.py``). An agent restart re-adopts running
VMs from their pid files and QMP sockets (and their taps; taps of no VM are removed:
``hostagent/drivers/qemuadopt.py``); :meth:`close` leaves every VM running.

This module is the ``HypervisorDriver`` itself (start, pause, resume, stop, destroy, the
inventory, the console, replicated disks); the steps every operation shares (launch, attach,
boot, take down) are in hostagent/drivers/qemuhost.py, live migration in qemumigrate.py.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

from common.errors import DriverError
from common.messages import ObservedVm, VmSpec
from common.replica_messages import SetDiskReplicas
from hostagent.disks import effective_disks
from hostagent.drivers.base import (
    ConsoleBytes,
    ConsoleDriver,
    HypervisorDriver,
    MigratingDriver,
    ReplicatingDriver,
)
from hostagent.drivers.qemuadopt import adopt
from hostagent.drivers.qemuconsole import ConsoleLink, read_console
from hostagent.drivers.qemumigrate import QemuMigrations
from hostagent.drivers.qemunics import plug
from hostagent.drivers.qemuproc import read_meta, wait_exit
from hostagent.drivers.qemuquorum import set_replicas
from hostagent.drivers.qemuvm import QemuVm, admit
from hostagent.drivers.qmp import QmpError

log = logging.getLogger(__name__)


class QemuDriver(QemuMigrations):
    """The ``HypervisorDriver`` over QEMU (and ``MigratingDriver``, ``ReplicatingDriver``,
    ``ConsoleDriver``)."""

    # ------------------------------------------------------------------ start

    async def start(self, spec: VmSpec, generation: int) -> None:
        if spec.name in self.vms:
            raise DriverError(f"vm {spec.name} already exists on this host", retryable=False)
        admit(spec, self.vms.values(), self.capacity, self.cpu_overcommit)
        vm = QemuVm(spec, generation, self.files(spec.name))
        self.vms[spec.name] = vm
        created: list[Path] = []
        try:
            async with self.boot_slots:
                if self.vms.get(spec.name) is not vm:
                    raise DriverError(f"vm {spec.name} was removed while queued", retryable=True)
                paths, created = await self.prepare_disks(vm)
                if self.settings.nics:
                    await plug(self.host_commands, spec)
                await self.start_process(vm, paths)
                await self.wait_booted(vm, time.monotonic() + self.settings.boot_timeout_s)
        except (DriverError, asyncio.CancelledError) as exc:
            await self.abandon(vm, created, exc)
            raise

    # ------------------------------------------------------------------ pause and resume

    async def pause(self, name: str) -> None:
        vm = self.get(name)
        if vm.unreachable:
            await self._kill_unreachable(vm)
            return
        if vm.paused or vm.stopping or vm.incoming is not None or vm.handed_over:
            return  # neither an incoming nor a handed-over VM executes
        vm.paused = True
        if vm.qmp is not None and not vm.qmp.closed.is_set():
            await self.execute(vm, "stop")

    async def resume(self, name: str) -> None:
        vm = self.get(name)
        if not vm.paused or vm.handed_over or vm.incoming is not None:
            return  # a handed-over VM never runs again; an incoming one runs on finish_incoming
        vm.paused = False
        if vm.qmp is None:
            return  # not launched yet: start() lets it run
        await self.execute(vm, "cont")
        if not vm.booted and not any(t.get_name().startswith("qemu-boot") for t in vm.tasks):
            self.spawn(vm, self.watch_boot(vm), "boot")

    async def _kill_unreachable(self, vm: QemuVm) -> None:
        """Fencing a VM that cannot be paused: kill it, so that it surely no longer runs."""
        log.error(
            "vm killed vm=%s pid=%s generation=%d: qemu unreachable (%s) and it must not run",
            vm.spec.name,
            vm.pid,
            vm.generation,
            vm.unreachable,
        )
        vm.stopping = True
        if vm.pid is not None:
            await self.kill(vm)
        await self.drop(vm)
        self.on_change()

    # ------------------------------------------------------------------ stop and destroy

    async def stop(self, name: str) -> None:
        vm = self.vms.get(name)
        if vm is None:
            return
        if vm.incoming is not None:  # its half-copied disks are not worth keeping
            await self.destroy(name)
            return
        vm.stopping = True
        graceful = vm.booted and not vm.paused and not vm.handed_over and vm.qmp is not None
        if graceful and await self._power_off(vm):
            log.info("vm powered off vm=%s", name)
        else:
            await self.terminate(vm)
        await self.drop(vm)

    async def _power_off(self, vm: QemuVm) -> bool:
        """ACPI power button; True if the guest powered itself off in time."""
        assert vm.qmp is not None and vm.pid is not None
        try:
            await vm.qmp.execute("system_powerdown")
        except QmpError:
            return False
        return await wait_exit(vm.pid, self.root, self.settings.stop_timeout_s)

    async def destroy(self, name: str) -> None:
        vm = self.vms.get(name)
        if vm is not None:
            vm.stopping = True
            if vm.pid is not None:
                await self.kill(vm)
            await self.drop(vm)
        await self.forget(name, None)

    async def forget(self, name: str, generation: int | None) -> None:
        """Remove what the host keeps of a VM it does not run (its disks and files), if that
        was kept at ``generation`` or older (None: whatever it is)."""
        if name in self.vms:
            return
        files = self.files(name)
        meta = read_meta(files)
        if meta is not None:
            if generation is not None and meta.generation > generation:
                return
            self.disks.remove([disk.disk_id for disk in effective_disks(meta.spec)])
        shutil.rmtree(files.dir, ignore_errors=True)

    # ------------------------------------------------------------------ inventory, adoption

    def inventory(self) -> list[ObservedVm]:
        return [
            ObservedVm(
                name=vm.spec.name,
                generation=vm.generation,
                state=vm.state,
                cpu_milli=vm.spec.cpu_milli,
                mem_mib=vm.spec.mem_mib,
                reason=vm.failure
                or (f"qemu unreachable: {vm.unreachable}" if vm.unreachable else ""),
                disks=vm.quorums.report() if vm.quorums is not None else [],
            )
            for vm in self.vms.values()
        ]

    async def adopt(self) -> list[str]:
        """Find the VMs left running by a previous agent (pid file + QMP socket) and hold them
        again; clear the run files of those that are gone. A live QEMU whose monitor does not
        answer is held as unreachable (see ``QemuVm.unreachable``). Returns the names held."""
        return await adopt(self)

    # ------------------------------------------------------------------ console

    def console_read(self, name: str, offset: int | None, max_bytes: int) -> ConsoleBytes:
        vm = self.get(name)
        return read_console(vm.files, vm.generation, offset, max_bytes)

    def console_writable(self, name: str) -> bool:
        vm = self.vms.get(name)
        return vm is not None and self._console(vm).available()

    async def console_write(self, name: str, data: bytes) -> None:
        vm = self.get(name)
        if not self._console(vm).available():
            raise DriverError(f"vm {name} has no console socket", retryable=False)
        await self._console(vm).write(data)

    def _console(self, vm: QemuVm) -> ConsoleLink:
        if vm.console is None:
            vm.console = ConsoleLink(vm.files)
        return vm.console

    # ------------------------------------------------------------------ replicated disks

    async def set_disk_replicas(self, command: SetDiskReplicas) -> None:
        vm = self.get(command.name)
        if vm.quorums is None or vm.qmp is None or vm.generation != command.generation:
            raise DriverError(
                f"vm {command.name} at generation {command.generation} has no replicated disk "
                "running here",
                retryable=False,
            )
        try:
            await set_replicas(vm.qmp, vm.quorums, command)
        except QmpError as exc:
            raise DriverError(f"disk copies of vm {command.name}: {exc}", retryable=True) from exc
        for task in vm.quorums.joins.values():
            vm.tasks.add(task)
            task.add_done_callback(vm.tasks.discard)
        self.on_change()

    def disk_path(self, disk_id: str) -> Path:
        return self.disks.path(disk_id)

    async def close(self) -> None:
        """Disconnect from every VM and leave it running."""
        for vm in list(self.vms.values()):
            await self.disconnect(vm)
        self.vms.clear()


_: type[HypervisorDriver] = QemuDriver
_migrating: type[MigratingDriver] = QemuDriver
_replicating: type[ReplicatingDriver] = QemuDriver
_console: type[ConsoleDriver] = QemuDriver
