"""The seam between the host agent and a hypervisor.

A driver owns the VMs of one host: it starts them, pauses and resumes them, stops and destroys
them, and reports what it holds. The agent decides *which* operation to run and when (generations,
idempotency, fencing); the driver only carries it out. A real driver (one ``qemu-system`` process
per VM, driven over QMP, qcow2 overlays) and the in-memory fake both sit behind this Protocol.

Contract, for every implementation:

- Operations on one VM are never interleaved by the agent, except :meth:`pause`, which the fence
  watchdog may call at any moment (also while :meth:`start` is still booting the VM): fencing
  must not wait for a slow boot.
- :meth:`inventory` is synchronous and cheap: the agent calls it for every heartbeat.
- Failures raise :class:`common.errors.DriverError` with ``retryable`` set: ``True`` when the same
  operation may succeed later or elsewhere (no room, a transient I/O error), ``False`` when it
  never will (a broken image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from common.errors import DriverError
from common.messages import ObservedVm, VmSpec
from common.replica_messages import SetDiskReplicas

__all__ = [
    "ConsoleBytes",
    "ConsoleDriver",
    "DriverError",
    "HypervisorDriver",
    "IncomingEndpoint",
    "MigratingDriver",
    "MigrationProgress",
    "ReplicatingDriver",
]


class HypervisorDriver(Protocol):
    name: str
    """Reported in heartbeats (``fake``, ``qemu``)."""

    async def start(self, spec: VmSpec, generation: int) -> None:
        """Create and boot ``spec`` at ``generation``; return once it runs.

        The VM appears in :meth:`inventory` as ``starting`` as soon as this is called. If it is
        paused while booting, this returns with the VM ``paused``. On failure nothing is left
        behind (no process, no reserved resources) and ``DriverError`` is raised.
        """
        ...

    async def stop(self, name: str) -> None:
        """Power the VM off (gracefully, with a hard fallback) and release its host resources.

        It leaves the inventory; its disks are kept, so that a later start may reuse them.
        Stopping an unknown VM does nothing.
        """
        ...

    async def destroy(self, name: str) -> None:
        """Kill the VM at once and release everything the host holds for it, disks included.

        It leaves the inventory. Destroying an unknown VM does nothing.
        """
        ...

    async def forget(self, name: str, generation: int) -> None:
        """Remove what the host keeps of a VM it does not run (a stopped VM's disks), if it was
        kept at ``generation`` or older. A VM it runs, or an unknown one, is left alone."""
        ...

    async def pause(self, name: str) -> None:
        """Stop executing the VM's vCPUs (QMP ``stop``); memory and devices are kept.

        Returns once the VM no longer executes. Pausing a paused VM does nothing.
        """
        ...

    async def resume(self, name: str) -> None:
        """Let a paused VM execute again (QMP ``cont``). Resuming a running VM does nothing."""
        ...

    def inventory(self) -> list[ObservedVm]:
        """Every VM this driver holds, with its generation and state."""
        ...

    async def close(self) -> None:
        """Release the driver's own resources. A real driver leaves its VMs running."""
        ...


@dataclass(frozen=True, slots=True)
class ConsoleBytes:
    """A piece of a VM's console output: ``data`` starts at byte ``offset`` of everything the
    VM (at ``generation``) wrote to its serial console since it last started."""

    generation: int
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@runtime_checkable
class ConsoleDriver(Protocol):
    """A driver whose VMs have a serial console the agent can read (and perhaps type on)."""

    def console_read(self, name: str, offset: int | None, max_bytes: int) -> ConsoleBytes:
        """At most ``max_bytes`` of the VM's console output from ``offset``; None: the last
        ``max_bytes``. An offset older than what is kept, or past the end (the VM started
        again), reads from the oldest byte kept. ``DriverError`` for a VM it does not hold."""
        ...

    def console_writable(self, name: str) -> bool:
        """Whether :meth:`console_write` can reach this VM's console."""
        ...

    async def console_write(self, name: str, data: bytes) -> None:
        """Type ``data`` on the VM's console; ``DriverError`` when it cannot."""
        ...


@dataclass(frozen=True, slots=True)
class IncomingEndpoint:
    """Where the destination of a live migration waits: QEMU's ``-incoming`` listener and the NBD
    server exporting the VM's disks (one export per ``DiskSpec.disk_id``), both on ``address``."""

    address: str
    migration_port: int
    nbd_port: int


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    """How far an outgoing migration is: MiB sent of what there is to send (disks, then memory;
    ``total_mib`` may grow while the guest dirties memory)."""

    transferred_mib: int
    total_mib: int


@runtime_checkable
class MigratingDriver(Protocol):
    """A driver that can move a running VM to another host's driver of the same kind, live
    (the protocol is in common/migration_messages.py). Operations on one VM are not interleaved
    by the agent, except :meth:`cancel_migration` (during :meth:`migrate_out`) and :meth:`pause`."""

    async def prepare_incoming(
        self, spec: VmSpec, generation: int, listen_address: str
    ) -> IncomingEndpoint:
        """Get ready to receive ``spec`` as ``generation``: its disks created empty at full size
        and exported, the VM paused and waiting for its state, both on ``listen_address``.

        The VM holds its resources and shows in :meth:`inventory` as ``incoming``. Repeating it
        for the same VM and generation returns the same endpoint. On failure nothing is left
        behind and ``DriverError`` is raised.
        """
        ...

    async def migrate_out(
        self,
        name: str,
        target: IncomingEndpoint,
        *,
        max_downtime_ms: int,
        max_bandwidth_mib_s: int,
    ) -> None:
        """Send the running VM to ``target``: its disks (mirrored, so that writes made meanwhile
        reach both copies), then its memory, then a last round with the VM paused.

        Returns once the VM is ``handed_over``: paused here for good, its whole state on the
        destination. On failure or cancel it raises ``DriverError`` and the VM runs here as
        before (the destination's copy is left for its own host to destroy).
        """
        ...

    def migration_progress(self, name: str) -> MigrationProgress | None:
        """The progress of the VM's outgoing migration; None when none runs."""
        ...

    async def cancel_migration(self, name: str) -> None:
        """End the VM's outgoing migration without a switchover (:meth:`migrate_out` raises).
        Nothing happens when none runs or the VM was already handed over."""
        ...

    async def finish_incoming(self, name: str) -> None:
        """The VM received completely is now the VM: stop exporting its disks and let it run.

        ``DriverError`` if its state has not fully arrived (it stays ``incoming``).
        """
        ...


@runtime_checkable
class ReplicatingDriver(Protocol):
    """A driver whose VMs may have replicated disks (common/replica_messages.py): each such
    disk is written to every current copy; the VM's host changes that set while the VM runs."""

    async def set_disk_replicas(self, command: SetDiskReplicas) -> None:
        """Make ``command.replicas`` the copies the VM's disk writes to: drop the others (a VM
        stopped by a failed copy goes on once no failed copy is left), and bring each of
        ``command.joining`` in step and add it. Returns once the drops are done and the joins
        are under way (:meth:`inventory` reports their progress in ``ObservedVm.disks``).
        ``DriverError`` when the VM is not held or has no such disk."""
        ...
