"""Adoption after an agent restart: the QEMU driver holds again the VMs a previous agent left
running (found by their pid files and QMP sockets), clears the run files of those that are gone,
and removes the taps it made for VMs it no longer holds.

A live QEMU whose monitor does not answer is held as unreachable (``QemuVm.unreachable``), kept
under the fence guard and tried again every ``REATTACH_S`` until it answers or its process is
gone. A VM adopted in the middle of a live migration settles its part in it
(:func:`hostagent.drivers.qemumigrate.settle_adopted`).
"""

from __future__ import annotations

import asyncio
import logging

from common.errors import DriverError
from hostagent.drivers.qemuhost import QemuHost
from hostagent.drivers.qemumigrate import incoming_of, settle_adopted
from hostagent.drivers.qemunics import host_taps, taps, unplug
from hostagent.drivers.qemuproc import (
    READY_MARKER,
    VmFiles,
    pid_alive,
    read_meta,
    read_pid,
    read_serial,
)
from hostagent.drivers.qemuquorum import Quorums, load, replicated
from hostagent.drivers.qemuvm import QemuVm
from hostagent.drivers.qmp import QmpError

log = logging.getLogger(__name__)

REATTACH_S = 1.0
"""How often an unreachable QEMU found at adoption is tried again."""


async def adopt(host: QemuHost) -> list[str]:
    """Find the VMs left running by a previous agent and hold them again; the names held."""
    adopted: list[str] = []
    for meta_path in sorted((host.root / "vms").glob("*/vm.json")):
        files = VmFiles(meta_path.parent)
        meta = read_meta(files)
        pid = read_pid(files)
        if meta is None or pid is None:
            continue
        if not pid_alive(pid, host.root):
            files.clear_run_files()
            continue
        vm = QemuVm(meta.spec, meta.generation, files, pid=pid, arrived=meta.arrived)
        vm.incoming = incoming_of(meta)
        if replicated(meta.spec):
            disks = load(files, meta.generation, meta.spec)
            vm.quorums = Quorums(meta.spec.name, meta.generation, files, disks)
        host.vms[meta.spec.name] = vm
        adopted.append(meta.spec.name)
        try:
            status = await _hold(host, vm)
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
            host.spawn(vm, _reattach(host, vm), "reattach")
            continue
        log.info("vm adopted vm=%s pid=%d status=%s", meta.spec.name, pid, status)
    await _remove_orphan_taps(host)
    return adopted


async def _remove_orphan_taps(host: QemuHost) -> None:
    """Taps this driver made (its VMs' ``vm.json`` name them) for VMs it does not hold;
    taps of other agents sharing the namespace are not its business."""
    metas = [read_meta(VmFiles(path.parent)) for path in (host.root / "vms").glob("*/vm.json")]
    made = {tap for meta in metas if meta is not None for tap in taps(meta.spec)}
    held = {tap for vm in host.vms.values() for tap in taps(vm.spec)}
    orphans = sorted((await host_taps(host.host_commands) & made) - held)
    if orphans:
        log.warning("orphan taps removed taps=%s", ",".join(orphans))
        await unplug(host.host_commands, orphans)


async def _hold(host: QemuHost, vm: QemuVm) -> str:
    """Attach to an adopted VM's QEMU and take its run state; its QEMU status."""
    try:
        await host.attach(vm)
        assert vm.qmp is not None
        status = await vm.qmp.query_status()
        vm.paused = status != "running"
        vm.booted = vm.arrived or READY_MARKER in read_serial(vm.files)
        await settle_adopted(vm, status)  # its part in a migration, if any
    except (DriverError, QmpError):
        if vm.qmp is not None:  # the exit watch must not take a slow monitor for an exit
            for task in list(vm.tasks):
                if task.get_name().startswith("qemu-exit"):
                    task.cancel()
            await vm.qmp.close()
            vm.qmp = None
        raise
    if not vm.booted and not vm.paused:
        host.spawn(vm, host.watch_boot(vm), "boot")
    return status


async def _reattach(host: QemuHost, vm: QemuVm) -> None:
    """Try an unreachable VM again until it answers (adopted) or its process is gone."""
    while host.vms.get(vm.spec.name) is vm and vm.unreachable:
        await asyncio.sleep(REATTACH_S)
        if vm.pid is None or not pid_alive(vm.pid, host.root):
            log.warning("unreachable vm exited vm=%s pid=%s", vm.spec.name, vm.pid)
            await host.drop(vm)
            host.on_change()
            return
        try:
            status = await _hold(host, vm)
        except (DriverError, QmpError):
            continue
        vm.unreachable = ""
        log.info(
            "vm adopted vm=%s pid=%d status=%s (reachable again)", vm.spec.name, vm.pid, status
        )
        host.on_change()
