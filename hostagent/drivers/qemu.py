"""The real hypervisor driver: one detached ``qemu-system-x86_64`` per VM, driven over QMP.

State comes from QEMU itself: the QMP connection of each VM (a closed socket means the process
is gone) and process liveness; a VM has booted once its guest printed the readiness marker on
the serial console. Boots wait for one of ``max_concurrent_boots`` slots (a boot costs seconds
of CPU under TCG), so a burst of starts, such as a failover onto this host, is queued instead of
overloading it. Disks are host-local qcow2 files (``hostagent/disks.py``): kept by ``stop``,
removed by ``destroy``. NICs are taps on the bridges of their networks, made before the launch
and removed with the VM (``hostagent/drivers/qemunics.py``). An agent restart re-adopts running
VMs from their pid files and QMP sockets (and their taps; taps of no VM are removed);
:meth:`close` leaves every VM running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from common.errors import DriverError
from common.messages import ObservedVm, VmSpec
from common.replica_messages import SetDiskReplicas
from common.resources import Resources
from hostagent.disks import DiskStore, effective_disks
from hostagent.drivers.base import (
    ConsoleBytes,
    ConsoleDriver,
    HypervisorDriver,
    MigratingDriver,
    ReplicatingDriver,
)
from hostagent.drivers.qemuconsole import ConsoleLink, read_console
from hostagent.drivers.qemumigrate import QemuMigrations, incoming_of
from hostagent.drivers.qemunics import host_taps, plug, taps, unplug
from hostagent.drivers.qemuproc import (
    FAILED_MARKER,
    READY_MARKER,
    Drive,
    QemuSettings,
    VmFiles,
    VmMeta,
    kill,
    launch,
    pid_alive,
    read_meta,
    read_pid,
    read_serial,
    serial_tail,
    wait_exit,
    write_meta,
)
from hostagent.drivers.qemuquorum import Quorums, drives, initial, load, replicated, set_replicas
from hostagent.drivers.qemuvm import QemuVm, admit
from hostagent.drivers.qmp import JsonObject, QmpClient, QmpError
from hostagent.hostcmd import HostCommands
from hostagent.images import ImageCache

log = logging.getLogger(__name__)

POLL_S = 0.05
QUIT_WAIT_S = 3.0
KILL_WAIT_S = 5.0
REATTACH_S = 1.0
"""How often an unreachable QEMU found at adoption is tried again."""


class QemuDriver(QemuMigrations):
    name: str = "qemu"

    def __init__(
        self,
        settings: QemuSettings,
        root: Path,
        images: ImageCache,
        *,
        capacity: Resources,
        cpu_overcommit: float = 1.0,
    ) -> None:
        self.settings = settings
        self.root = root
        self.disks = DiskStore(root / "disks", images)
        self.capacity = capacity
        self.cpu_overcommit = cpu_overcommit
        self.name = f"qemu/{settings.accel}"
        """Reported in heartbeats: the driver and the accelerator it uses."""
        self.on_change: Callable[[], None] = lambda: None
        """Called when a VM changes by itself (booted, exited): the agent reports at once."""
        self._vms: dict[str, QemuVm] = {}
        self._boot_slots = asyncio.Semaphore(settings.max_concurrent_boots)
        self._commands = HostCommands(settings.netns)

    def files(self, name: str) -> VmFiles:
        return VmFiles(self.root / "vms" / name)

    # ------------------------------------------------------------------ start

    async def start(self, spec: VmSpec, generation: int) -> None:
        if spec.name in self._vms:
            raise DriverError(f"vm {spec.name} already exists on this host", retryable=False)
        admit(spec, self._vms.values(), self.capacity, self.cpu_overcommit)
        vm = QemuVm(spec, generation, self.files(spec.name))
        self._vms[spec.name] = vm
        created: list[Path] = []
        try:
            async with self._boot_slots:
                if self._vms.get(spec.name) is not vm:
                    raise DriverError(f"vm {spec.name} was removed while queued", retryable=True)
                paths, created = await self._prepare(vm)
                if self.settings.nics:
                    await plug(self._commands, spec)
                await self._launch(vm, paths)
                await self._wait_booted(vm, time.monotonic() + self.settings.boot_timeout_s)
        except (DriverError, asyncio.CancelledError) as exc:
            await self._abandon(vm, created, exc)
            raise

    async def _prepare(self, vm: QemuVm) -> tuple[list[Drive], list[Path]]:
        """Disks ready and ``vm.json`` written; disks of an older incarnation are removed.
        Replicated disks have no file here: QEMU opens their copies (``quorum.json``)."""
        old = read_meta(vm.files)
        if replicated(vm.spec):
            vm.quorums = Quorums(vm.spec.name, vm.generation, vm.files, initial(vm.spec))
        paths, created = await self.disks.prepare(vm.spec)
        if old is not None:
            keep = {disk.disk_id for disk in effective_disks(vm.spec)}
            stale = [d.disk_id for d in effective_disks(old.spec) if d.disk_id not in keep]
            self.disks.remove(stale)
        write_meta(
            vm.files, VmMeta(spec=vm.spec, generation=vm.generation, accel=self.settings.accel)
        )
        if vm.quorums is not None:
            vm.quorums.save()
        return drives(vm.spec, paths, vm.quorums.disks if vm.quorums else []), created

    async def _launch(self, vm: QemuVm, disks: list[Drive]) -> None:
        vm.pid = await launch(self.settings, vm.spec, vm.files, disks)
        log.info("qemu launched vm=%s pid=%d accel=%s", vm.spec.name, vm.pid, self.settings.accel)
        await self._attach(vm)
        if not vm.paused:
            await self._qmp(vm, "cont")

    async def _attach(self, vm: QemuVm) -> None:
        """Connect QMP and watch the process: its socket closing means QEMU exited."""

        def on_event(event: str, data: JsonObject) -> None:
            log.debug("qmp event vm=%s event=%s data=%s", vm.spec.name, event, data)
            if vm.quorums is not None:
                vm.quorums.notice(event, data)
            if vm.quorums is not None and vm.quorums.stopped_by_error and event == "STOP":
                self.on_change()  # stopped by a failed disk copy (reported), not fenced
            elif vm.outgoing is not None:  # the migration's STOP is no fence
                vm.outgoing.notice(event, data)
            elif vm.incoming is not None:  # finish_incoming waits for the state's arrival
                vm.arrival.notice(event, data)
            elif event == "STOP" and not vm.paused and not vm.stopping and not vm.handed_over:
                # Paused through another monitor: the fence guard's (hostagent/fenceguard.py).
                vm.paused = True
                log.warning("vm paused by the fence guard vm=%s", vm.spec.name)
                self.on_change()

        vm.qmp = await self._connect(vm, on_event)
        self._spawn(vm, self._watch_exit(vm, vm.qmp), "exit")

    async def _connect(self, vm: QemuVm, on_event: Callable[[str, JsonObject], None]) -> QmpClient:
        try:
            return await QmpClient.connect(vm.files.qmp, on_event=on_event)
        except QmpError as exc:
            raise DriverError(
                f"cannot reach qemu of vm {vm.spec.name}: {exc}", retryable=True
            ) from exc

    def _spawn(self, vm: QemuVm, coro: object, what: str) -> None:
        assert asyncio.iscoroutine(coro)
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"qemu-{what}-{vm.spec.name}")
        vm.tasks.add(task)
        task.add_done_callback(vm.tasks.discard)

    async def _wait_booted(self, vm: QemuVm, deadline_s: float) -> None:
        """Until the guest printed its marker, or was paused (then return with it paused)."""
        while not vm.paused:
            serial = read_serial(vm.files)
            if READY_MARKER in serial:
                vm.booted = True
                log.info("vm booted vm=%s generation=%d", vm.spec.name, vm.generation)
                return
            if FAILED_MARKER in serial or vm.qmp is None or vm.qmp.closed.is_set():
                why = "guest failed to boot" if FAILED_MARKER in serial else "qemu exited"
                raise DriverError(f"{why}; serial: {serial_tail(vm.files)}", retryable=False)
            if time.monotonic() >= deadline_s:
                raise DriverError(
                    f"boot timeout: no readiness marker after {self.settings.boot_timeout_s:g}s; "
                    f"serial: {serial_tail(vm.files)}",
                    retryable=False,
                )
            await asyncio.sleep(POLL_S)

    async def _abandon(self, vm: QemuVm, created: list[Path], exc: BaseException) -> None:
        """A start failed or was cancelled: leave no process and no new disk behind."""
        log.warning("vm start abandoned vm=%s error=%s", vm.spec.name, exc)
        vm.stopping = True
        await self._kill(vm)
        await self._forget(vm)
        self.disks.remove_paths(created)

    # ------------------------------------------------------------------ process watch

    async def _watch_exit(self, vm: QemuVm, qmp: QmpClient) -> None:
        await qmp.closed.wait()
        if vm.stopping or self._vms.get(vm.spec.name) is not vm:
            return
        if vm.pid is not None and not await wait_exit(vm.pid, self.root, KILL_WAIT_S):
            log.warning("qmp closed but qemu still runs vm=%s pid=%d", vm.spec.name, vm.pid)
            return
        log.warning(
            "vm process exited vm=%s generation=%d serial=%s",
            vm.spec.name,
            vm.generation,
            serial_tail(vm.files, 3),
        )
        vm.files.clear_run_files()
        del self._vms[vm.spec.name]
        await qmp.close()
        await unplug(self._commands, taps(vm.spec))
        self.on_change()

    async def _watch_boot(self, vm: QemuVm) -> None:
        """A VM resumed before it ever booted: its boot goes on in the background."""
        try:
            await self._wait_booted(vm, time.monotonic() + self.settings.boot_timeout_s)
        except DriverError as exc:
            vm.failure = str(exc)
            log.error("vm boot failed vm=%s error=%s", vm.spec.name, exc)
        self.on_change()

    # ------------------------------------------------------------------ pause and resume

    async def pause(self, name: str) -> None:
        vm = self._get(name)
        if vm.unreachable:
            await self._kill_unreachable(vm)
            return
        if vm.paused or vm.stopping or vm.incoming is not None or vm.handed_over:
            return  # neither an incoming nor a handed-over VM executes
        vm.paused = True
        if vm.qmp is not None and not vm.qmp.closed.is_set():
            await self._qmp(vm, "stop")

    async def resume(self, name: str) -> None:
        vm = self._get(name)
        if not vm.paused or vm.handed_over or vm.incoming is not None:
            return  # a handed-over VM never runs again; an incoming one runs on finish_incoming
        vm.paused = False
        if vm.qmp is None:
            return  # not launched yet: start() lets it run
        await self._qmp(vm, "cont")
        if not vm.booted and not any(t.get_name().startswith("qemu-boot") for t in vm.tasks):
            self._spawn(vm, self._watch_boot(vm), "boot")

    async def _qmp(self, vm: QemuVm, command: str) -> None:
        assert vm.qmp is not None
        try:
            await vm.qmp.execute(command)
        except QmpError as exc:
            raise DriverError(
                f"qmp {command} failed for vm {vm.spec.name}: {exc}", retryable=True
            ) from exc

    def _get(self, name: str) -> QemuVm:
        vm = self._vms.get(name)
        if vm is None:
            raise DriverError(f"no vm {name} on this host", retryable=False)
        return vm

    # ------------------------------------------------------------------ stop and destroy

    async def stop(self, name: str) -> None:
        vm = self._vms.get(name)
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
            await self._kill(vm)
        await self._forget(vm)

    async def _power_off(self, vm: QemuVm) -> bool:
        """ACPI power button; True if the guest powered itself off in time."""
        assert vm.qmp is not None and vm.pid is not None
        try:
            await vm.qmp.execute("system_powerdown")
        except QmpError:
            return False
        return await wait_exit(vm.pid, self.root, self.settings.stop_timeout_s)

    async def _kill(self, vm: QemuVm) -> None:
        """QMP ``quit``, then SIGKILL; returns once the process is gone."""
        if vm.pid is None:
            vm.pid = read_pid(vm.files)
        if vm.pid is None:
            return
        if vm.qmp is not None and not vm.qmp.closed.is_set():
            with contextlib.suppress(QmpError):
                await vm.qmp.execute("quit", timeout_s=QUIT_WAIT_S)
            if await wait_exit(vm.pid, self.root, QUIT_WAIT_S):
                return
        kill(vm.pid)
        if not await wait_exit(vm.pid, self.root, KILL_WAIT_S):
            raise DriverError(f"qemu pid {vm.pid} survived SIGKILL", retryable=True)

    async def _forget(self, vm: QemuVm) -> None:
        """Drop a VM whose process is gone: its tasks, QMP connection and run files."""
        if self._vms.get(vm.spec.name) is vm:
            del self._vms[vm.spec.name]
        for task in list(vm.tasks):
            task.cancel()
        if vm.qmp is not None:
            await vm.qmp.close()
        if vm.console is not None:
            vm.console.close()
        vm.files.clear_run_files()
        await unplug(self._commands, taps(vm.spec))

    async def destroy(self, name: str) -> None:
        vm = self._vms.get(name)
        if vm is not None:
            vm.stopping = True
            if vm.pid is not None:
                kill(vm.pid)
                if not await wait_exit(vm.pid, self.root, KILL_WAIT_S):
                    raise DriverError(f"qemu pid {vm.pid} survived SIGKILL", retryable=True)
            await self._forget(vm)
        await self.forget(name, None)

    async def forget(self, name: str, generation: int | None) -> None:
        """Remove what the host keeps of a VM it does not run (its disks and files), if that
        was kept at ``generation`` or older (None: whatever it is)."""
        if name in self._vms:
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
            for vm in self._vms.values()
        ]

    async def adopt(self) -> list[str]:
        """Find the VMs left running by a previous agent (pid file + QMP socket) and hold them
        again; clear the run files of those that are gone. A live QEMU whose monitor does not
        answer is held as unreachable (see ``QemuVm.unreachable``). Returns the names held."""
        adopted: list[str] = []
        for meta_path in sorted((self.root / "vms").glob("*/vm.json")):
            files = VmFiles(meta_path.parent)
            meta = read_meta(files)
            pid = read_pid(files)
            if meta is None or pid is None:
                continue
            if not pid_alive(pid, self.root):
                files.clear_run_files()
                continue
            vm = QemuVm(meta.spec, meta.generation, files, pid=pid, arrived=meta.arrived)
            vm.incoming = incoming_of(meta)
            if replicated(meta.spec):
                disks = load(files, meta.generation, meta.spec)
                vm.quorums = Quorums(meta.spec.name, meta.generation, files, disks)
            self._vms[meta.spec.name] = vm
            adopted.append(meta.spec.name)
            try:
                status = await self._hold(vm)
            except (DriverError, QmpError) as exc:
                vm.unreachable = str(exc)
                log.error(
                    "vm unreachable vm=%s pid=%d error=%s: held, kept under the fence guard, "
                    "retried every %gs",
                    meta.spec.name,
                    pid,
                    exc,
                    REATTACH_S,
                )
                self._spawn(vm, self._reattach(vm), "reattach")
                continue
            log.info("vm adopted vm=%s pid=%d status=%s", meta.spec.name, pid, status)
        await self._remove_orphan_taps()
        return adopted

    async def _remove_orphan_taps(self) -> None:
        """Taps this driver made (its VMs' ``vm.json`` name them) for VMs it does not hold;
        taps of other agents sharing the namespace are not its business."""
        metas = [read_meta(VmFiles(path.parent)) for path in (self.root / "vms").glob("*/vm.json")]
        made = {tap for meta in metas if meta is not None for tap in taps(meta.spec)}
        held = {tap for vm in self._vms.values() for tap in taps(vm.spec)}
        orphans = sorted((await host_taps(self._commands) & made) - held)
        if orphans:
            log.warning("orphan taps removed taps=%s", ",".join(orphans))
            await unplug(self._commands, orphans)

    async def _hold(self, vm: QemuVm) -> str:
        """Attach to an adopted VM's QEMU and take its run state; its QEMU status."""
        try:
            await self._attach(vm)
            assert vm.qmp is not None
            status = await vm.qmp.query_status()
            vm.paused = status != "running"
            vm.booted = vm.arrived or READY_MARKER in read_serial(vm.files)
            await self._settle_adopted(vm, status)  # its part in a migration, if any
        except (DriverError, QmpError):
            if vm.qmp is not None:  # the exit watch must not take a slow monitor for an exit
                for task in list(vm.tasks):
                    if task.get_name().startswith("qemu-exit"):
                        task.cancel()
                await vm.qmp.close()
                vm.qmp = None
            raise
        if not vm.booted and not vm.paused:
            self._spawn(vm, self._watch_boot(vm), "boot")
        return status

    async def _reattach(self, vm: QemuVm) -> None:
        """Try an unreachable VM again until it answers (adopted) or its process is gone."""
        while self._vms.get(vm.spec.name) is vm and vm.unreachable:
            await asyncio.sleep(REATTACH_S)
            if vm.pid is None or not pid_alive(vm.pid, self.root):
                log.warning("unreachable vm exited vm=%s pid=%s", vm.spec.name, vm.pid)
                await self._forget(vm)
                self.on_change()
                return
            try:
                status = await self._hold(vm)
            except (DriverError, QmpError):
                continue
            vm.unreachable = ""
            log.info(
                "vm adopted vm=%s pid=%d status=%s (reachable again)", vm.spec.name, vm.pid, status
            )
            self.on_change()

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
            kill(vm.pid)
            if not await wait_exit(vm.pid, self.root, KILL_WAIT_S):
                raise DriverError(f"qemu pid {vm.pid} survived SIGKILL", retryable=True)
        await self._forget(vm)
        self.on_change()

    # ------------------------------------------------------------------ console

    def console_read(self, name: str, offset: int | None, max_bytes: int) -> ConsoleBytes:
        vm = self._get(name)
        return read_console(vm.files, vm.generation, offset, max_bytes)

    def console_writable(self, name: str) -> bool:
        vm = self._vms.get(name)
        return vm is not None and self._console(vm).available()

    async def console_write(self, name: str, data: bytes) -> None:
        vm = self._get(name)
        if not self._console(vm).available():
            raise DriverError(f"vm {name} has no console socket", retryable=False)
        await self._console(vm).write(data)

    def _console(self, vm: QemuVm) -> ConsoleLink:
        if vm.console is None:
            vm.console = ConsoleLink(vm.files)
        return vm.console

    # ------------------------------------------------------------------ replicated disks

    async def set_disk_replicas(self, command: SetDiskReplicas) -> None:
        vm = self._get(command.name)
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
        for vm in list(self._vms.values()):
            for task in list(vm.tasks):
                task.cancel()
            if vm.qmp is not None:
                await vm.qmp.close()
            if vm.console is not None:
                vm.console.close()
        self._vms.clear()


_: type[HypervisorDriver] = QemuDriver
_migrating: type[MigratingDriver] = QemuDriver
_replicating: type[ReplicatingDriver] = QemuDriver
_console: type[ConsoleDriver] = QemuDriver
