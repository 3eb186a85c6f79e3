"""The VMs the QEMU driver holds on this host, and the steps every operation on them shares:
their files and disks ready for a launch, the QEMU process launched and its monitor attached
(with a watch that notices the process exiting), a boot waited for (each in one of
``max_concurrent_boots`` slots, taken by the caller), and a VM taken down and dropped.

:class:`QemuHost` is the base of :class:`hostagent.drivers.qemu.QemuDriver` (starts, stops,
pauses: the ``HypervisorDriver`` itself) and of :class:`~hostagent.drivers.qemumigrate.
QemuMigrations` (live migration); adoption after an agent restart is in
hostagent/drivers/qemuadopt.py. They all act on the VMs through the methods here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path

from common.errors import DriverError
from common.resources import Resources
from hostagent.disks import DiskStore, effective_disks
from hostagent.drivers.qemunics import taps, unplug
from hostagent.drivers.qemuproc import (
    FAILED_MARKER,
    READY_MARKER,
    Drive,
    QemuSettings,
    VmFiles,
    VmMeta,
    kill,
    launch,
    read_meta,
    read_pid,
    read_serial,
    serial_tail,
    wait_exit,
    write_meta,
)
from hostagent.drivers.qemuquorum import Quorums, drives, initial, replicated
from hostagent.drivers.qemuvm import QemuVm
from hostagent.drivers.qmp import JsonObject, QmpClient, QmpError
from hostagent.hostcmd import HostCommands
from hostagent.images import ImageCache

log = logging.getLogger(__name__)

POLL_S = 0.05
QUIT_WAIT_S = 3.0
KILL_WAIT_S = 5.0


class QemuHost:
    """The VMs held (by name) and the shared steps of every operation on them."""

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
        self.vms: dict[str, QemuVm] = {}
        self.boot_slots = asyncio.Semaphore(settings.max_concurrent_boots)
        self.host_commands = HostCommands(settings.netns)

    def files(self, name: str) -> VmFiles:
        return VmFiles(self.root / "vms" / name)

    def get(self, name: str) -> QemuVm:
        vm = self.vms.get(name)
        if vm is None:
            raise DriverError(f"no vm {name} on this host", retryable=False)
        return vm

    # ------------------------------------------------------------------ launch

    async def prepare_disks(self, vm: QemuVm) -> tuple[list[Drive], list[Path]]:
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

    async def start_process(self, vm: QemuVm, disks: list[Drive]) -> None:
        """Launch the VM's QEMU, attach to it and let it run (unless it is to stay paused)."""
        vm.pid = await launch(self.settings, vm.spec, vm.files, disks)
        log.info("qemu launched vm=%s pid=%d accel=%s", vm.spec.name, vm.pid, self.settings.accel)
        await self.attach(vm)
        if not vm.paused:
            await self.execute(vm, "cont")

    async def attach(self, vm: QemuVm) -> None:
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
        self.spawn(vm, self._watch_exit(vm, vm.qmp), "exit")

    async def _connect(self, vm: QemuVm, on_event: Callable[[str, JsonObject], None]) -> QmpClient:
        try:
            return await QmpClient.connect(vm.files.qmp, on_event=on_event)
        except QmpError as exc:
            raise DriverError(
                f"cannot reach qemu of vm {vm.spec.name}: {exc}", retryable=True
            ) from exc

    def spawn(self, vm: QemuVm, coro: Coroutine[object, object, None], what: str) -> None:
        """Run ``coro`` as one of the VM's tasks (cancelled when the VM is dropped)."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"qemu-{what}-{vm.spec.name}")
        vm.tasks.add(task)
        task.add_done_callback(vm.tasks.discard)

    async def execute(self, vm: QemuVm, command: str) -> None:
        """One QMP command without arguments; a failure is a retryable ``DriverError``."""
        assert vm.qmp is not None
        try:
            await vm.qmp.execute(command)
        except QmpError as exc:
            raise DriverError(
                f"qmp {command} failed for vm {vm.spec.name}: {exc}", retryable=True
            ) from exc

    # ------------------------------------------------------------------ boot and exit

    async def wait_booted(self, vm: QemuVm, deadline_s: float) -> None:
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

    async def watch_boot(self, vm: QemuVm) -> None:
        """A VM resumed (or adopted running) before it ever booted: its boot goes on in the
        background."""
        try:
            await self.wait_booted(vm, time.monotonic() + self.settings.boot_timeout_s)
        except DriverError as exc:
            vm.failure = str(exc)
            log.error("vm boot failed vm=%s error=%s", vm.spec.name, exc)
        self.on_change()

    async def _watch_exit(self, vm: QemuVm, qmp: QmpClient) -> None:
        await qmp.closed.wait()
        if vm.stopping or self.vms.get(vm.spec.name) is not vm:
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
        del self.vms[vm.spec.name]
        await qmp.close()
        await unplug(self.host_commands, taps(vm.spec))
        self.on_change()

    # ------------------------------------------------------------------ take down

    async def abandon(self, vm: QemuVm, created: list[Path], exc: BaseException) -> None:
        """A start failed or was cancelled: leave no process and no new disk behind."""
        log.warning("vm start abandoned vm=%s error=%s", vm.spec.name, exc)
        vm.stopping = True
        await self.terminate(vm)
        await self.drop(vm)
        self.disks.remove_paths(created)

    async def terminate(self, vm: QemuVm) -> None:
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
        await self.kill(vm)

    async def kill(self, vm: QemuVm) -> None:
        """SIGKILL; returns once the process is gone."""
        assert vm.pid is not None
        kill(vm.pid)
        if not await wait_exit(vm.pid, self.root, KILL_WAIT_S):
            raise DriverError(f"qemu pid {vm.pid} survived SIGKILL", retryable=True)

    @staticmethod
    async def disconnect(vm: QemuVm) -> None:
        """Stop watching a VM: its tasks, QMP connection and console (the process lives on)."""
        for task in list(vm.tasks):
            task.cancel()
        if vm.qmp is not None:
            await vm.qmp.close()
        if vm.console is not None:
            vm.console.close()

    async def drop(self, vm: QemuVm) -> None:
        """Drop a VM whose process is gone: its tasks, QMP connection and run files."""
        if self.vms.get(vm.spec.name) is vm:
            del self.vms[vm.spec.name]
        await self.disconnect(vm)
        vm.files.clear_run_files()
        await unplug(self.host_commands, taps(vm.spec))
