"""What the QEMU driver holds of one VM: its spec and generation, its files, its process and
monitor, and the run state derived from them (booted, paused, stopping, failed, unreachable);
and whether one more VM may join those it holds (:func:`admit`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from common.errors import DriverError
from common.messages import ObservedState, VmSpec
from common.resources import ZERO, Resources
from hostagent.drivers.base import IncomingEndpoint
from hostagent.drivers.qemuconsole import ConsoleLink
from hostagent.drivers.qemuflows import Arrival, Outgoing
from hostagent.drivers.qemunics import taps
from hostagent.drivers.qemuproc import VmFiles
from hostagent.drivers.qemuquorum import Quorums
from hostagent.drivers.qmp import QmpClient


@dataclass(eq=False)
class QemuVm:
    spec: VmSpec
    generation: int
    files: VmFiles
    booted: bool = False
    paused: bool = False
    """Fenced (QMP ``stop``), or asked to be before its vCPUs ever ran."""
    stopping: bool = False
    """The driver is taking it down: its process exiting is expected."""
    failure: str = ""
    unreachable: str = ""
    """Found at adoption but its monitor does not answer (why). Held, never forgotten: its run
    files stay for the fence guard, it is tried again every ``REATTACH_S``, and it is reported
    ``starting`` (not confirmed running), which the scheduler waits on instead of starting
    another copy. Fencing it while still unreachable kills it."""
    incoming: IncomingEndpoint | None = None
    """Destination of a live migration: paused, waiting for (or holding) its state, its disks
    exported, until ``finish_incoming`` lets it run (hostagent/drivers/qemumigrate.py)."""
    arrival: Arrival = field(default_factory=Arrival)
    """While ``incoming``: its QEMU's news of the state's arrival (the migration's events)."""
    outgoing: Outgoing | None = None
    """Source of a live migration under way (``migrate_out``)."""
    handed_over: bool = False
    """Source of a finished live migration: paused for good, its state on the destination."""
    arrived: bool = False
    """Came by live migration: booted on another host (no readiness marker here)."""
    finishing: bool = False
    """``finish_incoming`` has let it go (it is no longer ``incoming``) but its ``cont`` is not
    answered yet: still reported incoming, not paused. A heartbeat taken in between reported it
    paused, which the scheduler, in the switchover, took for a switchover that ended badly."""
    quorums: Quorums | None = None
    """Its replicated disks, if it has any (hostagent/drivers/qemuquorum.py)."""
    pid: int | None = None
    qmp: QmpClient | None = None
    console: ConsoleLink | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def state(self) -> ObservedState:
        if self.failure:
            return ObservedState.FAILED
        if self.unreachable:
            return ObservedState.STARTING
        if self.stopping:
            return ObservedState.STOPPING
        if self.handed_over:
            return ObservedState.HANDED_OVER
        if self.incoming is not None or self.finishing:
            return ObservedState.INCOMING
        if self.paused:
            return ObservedState.PAUSED
        return ObservedState.RUNNING if self.booted else ObservedState.STARTING

    @property
    def resources(self) -> Resources:
        return Resources(self.spec.cpu_milli, self.spec.mem_mib)


def admit(spec: VmSpec, held: Iterable[QemuVm], capacity: Resources, cpu_overcommit: float) -> None:
    """``DriverError`` unless ``spec`` fits beside the VMs ``held``: memory and CPU
    (retryable: room may free up) and tap names (two VMs whose names hash to one tap cannot
    share a host)."""
    held = list(held)
    used = sum((vm.resources for vm in held), ZERO)
    free_mem_mib = capacity.mem_mib - used.mem_mib
    if spec.mem_mib > free_mem_mib:
        raise DriverError(
            f"insufficient memory on host: need {spec.mem_mib} MiB, free {free_mem_mib} MiB",
            retryable=True,
        )
    free_cpu_milli = int(capacity.cpu_milli * cpu_overcommit) - used.cpu_milli
    if spec.cpu_milli > free_cpu_milli:
        raise DriverError(
            f"insufficient cpu on host: need {spec.cpu_milli} millicores, "
            f"free {free_cpu_milli} millicores",
            retryable=True,
        )
    mine = set(taps(spec))
    for other in held:
        if clash := mine & set(taps(other.spec)):
            raise DriverError(
                f"vm {spec.name} and vm {other.spec.name} would share tap {clash.pop()}",
                retryable=False,
            )
