"""An in-memory hypervisor for tests, demos and scale runs, with honest resource accounts.

Every VM it holds counts against the host's capacity, paused ones included (a paused VM keeps
its memory). Memory is never overcommitted; CPU up to ``capacity * cpu_overcommit``.

A VM's NICs are taps (named as the Linux driver names them) on its networks' bridges: a start
whose network is not in place on the host (``has_network``, the host's network backend) is
refused, as the real driver's would be, and two VMs never share a tap name.

Each VM has a simulated serial console: a boot log written as it starts (ending with the same
``STRATUS-READY`` line the tiny QEMU guest prints, then a ``# `` prompt), and a terminal that
echoes what is typed and, like ``cat`` on a tty, repeats each completed line. The last 64 KiB
are kept.

Live migration is simulated too (:class:`~hostagent.drivers.base.MigratingDriver`), with the
accounts and the timing of the real thing; see :class:`MigrationModel`. The fake cannot see
the other host: a source sends to nobody, and a destination takes "the state has arrived" to
mean "it has been incoming for at least a migration's setup time".
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.config import AgentConfig
from common.errors import DriverError
from common.messages import ObservedState, ObservedVm, VmSpec
from common.replica_messages import SetDiskReplicas
from common.resources import ZERO, Resources
from hostagent.drivers.base import (
    ConsoleBytes,
    ConsoleDriver,
    HypervisorDriver,
    IncomingEndpoint,
    MigratingDriver,
    MigrationProgress,
    ReplicatingDriver,
)
from hostagent.drivers.consolebuf import ConsoleBuffer
from hostagent.drivers.fakequorum import (
    DEFAULT_JOIN_MIB_S,
    WRITE_EVERY_S,
    DiskLedger,
    FakeQuorums,
    WriteRounds,
)
from hostagent.network import tap_name
from hostagent.vmcommands import Inventory

PROMPT = b"# "
FIRST_PORT = 49152
"""Incoming VMs get their (simulated) ports from the dynamic range, two each."""


@dataclass(frozen=True)
class MigrationModel:
    """How long a simulated live migration takes: ``setup_s`` plus what there is to send
    (memory plus the data disks' sizes) at ``bandwidth_mib_s`` (or the command's lower cap).

    The defaults match what this project measured of QEMU: two QEMU processes under TCG move a
    128 MiB guest in 0.6-0.7 s over loopback (PLATFORM.md), i.e. ~0.5 s of fixed cost (the
    handshake, device state, starting and stopping the dirty-page tracking) plus ~1 GiB/s,
    which is also what a 10 GbE link between hosts carries. A Small VM (1.75 GiB) takes 2.3 s,
    an A7 (56 GiB) about a minute. OS disks count nothing: their size is the image's, which the
    fake does not know, and a copy-on-write overlay mostly is the image. The guest dirties no
    memory, so the total never grows, and the last round always fits ``max_downtime_ms``.
    """

    setup_s: float = 0.5
    bandwidth_mib_s: float = 1024.0

    def __post_init__(self) -> None:
        if self.setup_s < 0 or not self.bandwidth_mib_s > 0:
            raise ValueError(f"bad migration model {self}")

    def duration_s(self, total_mib: int, bandwidth_mib_s: float) -> float:
        return self.setup_s + total_mib / bandwidth_mib_s


def fake_migration_model(config: AgentConfig) -> MigrationModel:
    return MigrationModel(config.fake_migration_setup_s, config.fake_migration_bandwidth_mib_s)


def migration_size_mib(spec: VmSpec) -> int:
    """What a live migration of ``spec`` sends: its memory and its data disks."""
    return spec.mem_mib + sum(disk.size_mib for disk in spec.disks)


@dataclass
class _Outgoing:
    target: IncomingEndpoint
    started_s: float
    total_mib: int
    bandwidth_mib_s: float
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _FakeVm:
    spec: VmSpec
    generation: int
    state: ObservedState
    booted: bool = False
    console: ConsoleBuffer = field(default_factory=ConsoleBuffer)
    typed: bytearray = field(default_factory=bytearray)
    """The line being typed on the console (not yet ended by CR or LF)."""
    incoming: IncomingEndpoint | None = None
    """Incoming: where it waits for its state, and since when."""
    incoming_since_s: float = 0.0
    outgoing: _Outgoing | None = None
    quorums: FakeQuorums | None = None
    """Its replicated disks (hostagent/drivers/fakequorum.py)."""

    @property
    def resources(self) -> Resources:
        return Resources(self.spec.cpu_milli, self.spec.mem_mib)

    def observe(self) -> ObservedVm:
        """How the VM stands, as the inventory reports it."""
        spec = self.spec
        return ObservedVm(
            name=spec.name,
            generation=self.generation,
            state=self.state,
            cpu_milli=spec.cpu_milli,
            mem_mib=spec.mem_mib,
            disks=self.quorums.report() if self.quorums is not None else [],
        )

    def boot_log(self, ready: bool) -> None:
        spec = self.spec
        if not ready:
            self.console.append(
                f"fake-bios: booting vm {spec.name} generation {self.generation}\r\n"
                f"fake-kernel: {spec.cpu_milli} millicores, {spec.mem_mib} MiB, "
                f"image {spec.image}, {len(spec.disks)} disks\r\n".encode()
            )
        else:
            self.console.append(f"STRATUS-READY vm={spec.name}\r\n".encode() + PROMPT)

    def type(self, data: bytes) -> None:
        """Echo ``data`` as a terminal would; each completed line is repeated, then a prompt."""
        for byte in data:
            char = bytes((byte,))
            if char in (b"\r", b"\n"):
                line = bytes(self.typed)
                self.typed.clear()
                self.console.append(b"\r\n" + (line + b"\r\n" if line else b"") + PROMPT)
            else:
                self.typed += char
                self.console.append(char)


class FakeDriver:
    """The accounts (what the VMs held take, the inventory) are kept as the VMs come, change and
    go, never summed up again: a command or a report does no work per VM held (a change copies
    the inventory's list and index, in C). :meth:`recount` computes them from scratch (for
    tests)."""

    name: str = "fake"

    def __init__(
        self,
        capacity: Resources,
        *,
        cpu_overcommit: float = 1.0,
        start_delay_s: float = 0.0,
        migration: MigrationModel | None = None,
        clock_s: Callable[[], float] = time.monotonic,
        ledger: DiskLedger | None = None,
        join_mib_s: float = DEFAULT_JOIN_MIB_S,
    ) -> None:
        self.capacity = capacity
        self.cpu_overcommit = cpu_overcommit
        self.start_delay_s = start_delay_s
        self.migration = migration or MigrationModel()
        self._clock_s = clock_s
        self.ledger = ledger or DiskLedger()
        """The write counts of the disk copies (shared by the hosts of a simulated pool)."""
        self.join_mib_s = join_mib_s
        self._next_port = FIRST_PORT
        self.has_network: Callable[[int], bool] | None = None
        """Whether the network with that VNI is in place (None: no network is checked)."""
        self._vms: dict[str, _FakeVm] = {}
        self._taps: dict[str, str] = {}
        """The taps of the VMs held: tap name -> VM."""
        self._allocated = ZERO
        self._observed: dict[str, ObservedVm] = {}
        """Each held VM as the inventory reports it, in the order they came."""
        self._inventory: Inventory | None = None
        """The last inventory handed out, while nothing changed since."""
        self._replicated: dict[str, FakeQuorums] = {}
        self._quorums_due_s = float("-inf")
        """The VMs with replicated disks: a look at the inventory is a write round of theirs
        (at most once every ``WRITE_EVERY_S``)."""
        self._rounds = WriteRounds(self.ledger)

    def allocated(self) -> Resources:
        """What every held VM (starting, running or paused) takes from the host."""
        return self._allocated

    def recount(self) -> tuple[Resources, list[ObservedVm]]:
        """:meth:`allocated` and :meth:`inventory` computed from scratch from the VMs held (the
        driver keeps them as it goes; tests check that the two agree)."""
        vms = self._vms.values()
        return sum((vm.resources for vm in vms), ZERO), [vm.observe() for vm in vms]

    def _changed(self, vm: _FakeVm) -> None:
        """``vm``'s state (or its disks' report) changed: its line in the inventory too."""
        if vm.quorums is not None:
            vm.quorums.running(vm.state is ObservedState.RUNNING)
        if self._vms.get(vm.spec.name) is vm:
            self._observed[vm.spec.name] = vm.observe()
            self._inventory = None

    def _add(self, spec: VmSpec, generation: int, state: ObservedState) -> _FakeVm:
        """Take ``spec``'s resources and taps, or raise ``DriverError``."""
        if spec.name in self._vms:
            raise DriverError(f"vm {spec.name} already exists on this host", retryable=False)
        self._check_fits(spec)
        taps = self._check_nics(spec)
        vm = _FakeVm(spec, generation, state)
        vm.quorums = FakeQuorums.of(spec, self.ledger, self._clock_s, self.join_mib_s, self._rounds)
        self._vms[spec.name] = vm
        self._taps.update(dict.fromkeys(taps, spec.name))
        self._allocated += vm.resources
        if vm.quorums is not None:
            self._replicated[spec.name] = vm.quorums
            self._rounds.watch(spec.name, vm.quorums)
        self._changed(vm)
        return vm

    async def start(self, spec: VmSpec, generation: int) -> None:
        vm = self._add(spec, generation, ObservedState.STARTING)
        vm.boot_log(ready=False)
        try:
            if self.start_delay_s > 0:
                await asyncio.sleep(self.start_delay_s)
        except asyncio.CancelledError:
            self._forget(vm)
            raise
        if self._vms.get(spec.name) is not vm:
            raise DriverError(f"vm {spec.name} was removed while starting", retryable=True)
        vm.booted = True
        vm.boot_log(ready=True)
        if vm.state is ObservedState.STARTING:
            vm.state = ObservedState.RUNNING
            self._changed(vm)

    def _check_fits(self, spec: VmSpec) -> None:
        used = self._allocated
        free_mem_mib = self.capacity.mem_mib - used.mem_mib
        if spec.mem_mib > free_mem_mib:
            raise DriverError(
                f"insufficient memory on host: need {spec.mem_mib} MiB, free {free_mem_mib} MiB",
                retryable=True,
            )
        cpu_limit = int(self.capacity.cpu_milli * self.cpu_overcommit)
        free_cpu_milli = cpu_limit - used.cpu_milli
        if spec.cpu_milli > free_cpu_milli:
            raise DriverError(
                f"insufficient cpu on host: need {spec.cpu_milli} millicores, "
                f"free {free_cpu_milli} millicores",
                retryable=True,
            )

    def _check_nics(self, spec: VmSpec) -> list[str]:
        """The VM's taps, if its networks are in place and no other VM has its tap names."""
        taps = [tap_name(spec.name, nic.index) for nic in spec.nics]
        for nic, tap in zip(spec.nics, taps, strict=True):
            if self.has_network is not None and not self.has_network(nic.vni):
                raise DriverError(
                    f"network {nic.vnet} (vni {nic.vni}) is not in place on this host",
                    retryable=True,
                )
            if self._taps.get(tap, spec.name) != spec.name:
                raise DriverError(f"tap {tap} is {self._taps[tap]}'s", retryable=True)
        return taps

    def taps(self) -> dict[str, str]:
        """The taps of the VMs held: tap name -> VM."""
        return dict(self._taps)

    def _drop(self, name: str) -> None:
        vm = self._vms.pop(name, None)
        if vm is None:
            return
        self._allocated -= vm.resources
        del self._observed[name]
        self._replicated.pop(name, None)
        self._rounds.watched.discard(name)
        if vm.quorums is not None:
            vm.quorums.retire()
        self._inventory = None
        if vm.outgoing is not None:
            vm.outgoing.cancelled.set()  # a killed VM sends nothing more
        for nic in vm.spec.nics:
            tap = tap_name(name, nic.index)
            if self._taps.get(tap) == name:
                del self._taps[tap]

    def _forget(self, vm: _FakeVm) -> None:
        if self._vms.get(vm.spec.name) is vm:
            self._drop(vm.spec.name)

    def _get(self, name: str) -> _FakeVm:
        vm = self._vms.get(name)
        if vm is None:
            raise DriverError(f"no vm {name} on this host", retryable=False)
        return vm

    async def stop(self, name: str) -> None:
        self._drop(name)

    async def destroy(self, name: str) -> None:
        self._drop(name)

    async def forget(self, name: str, generation: int) -> None:
        """The fake keeps nothing of a VM it does not run."""

    async def pause(self, name: str) -> None:
        vm = self._get(name)
        if vm.state in (ObservedState.RUNNING, ObservedState.STARTING):
            vm.state = ObservedState.PAUSED
            self._changed(vm)

    async def resume(self, name: str) -> None:
        vm = self._get(name)
        if vm.state is ObservedState.PAUSED:
            vm.state = ObservedState.RUNNING if vm.booted else ObservedState.STARTING
            self._changed(vm)

    def inventory(self) -> list[ObservedVm]:
        """The VMs held; the same list (an :class:`Inventory`) until one of them changes. A look
        is a write round of the replicated disks once every ``WRITE_EVERY_S`` of the clock, not
        at each call (the agent asks at every command and operation); a round costs nothing
        per VM but for those it must watch (their writes are counted when asked for)."""
        if self._replicated and self._clock_s() >= self._quorums_due_s:
            self._quorums_due_s = self._clock_s() + WRITE_EVERY_S
            for name in self._rounds.round(self._replicated):
                quorums = self._replicated[name]
                if not quorums.held and quorums.report() != self._observed[name].disks:
                    self._changed(self._vms[name])
        if self._inventory is None:
            self._inventory = Inventory(dict(self._observed))
        return self._inventory

    def watched(self) -> set[str]:
        """The replicated VMs a write round looks at now (the others cost it nothing)."""
        return set(self._rounds.watched)

    def quorums(self, name: str) -> FakeQuorums | None:
        """The replicated disks of VM ``name``: copies, joins and acknowledged writes (for
        tests and the chaos observer, with :attr:`ledger`), its writes counted."""
        vm = self._vms.get(name)
        if vm is None or vm.quorums is None:
            return None
        vm.quorums.settle()
        return vm.quorums

    async def set_disk_replicas(self, command: SetDiskReplicas) -> None:
        vm = self._get(command.name)
        if vm.quorums is None or vm.generation != command.generation:
            raise DriverError(f"vm {command.name} has no such replicated disk", retryable=False)
        vm.quorums.set(command)
        self._rounds.watch(command.name, vm.quorums)
        self._changed(vm)

    async def close(self) -> None:
        for name in list(self._vms):
            self._drop(name)
        self._vms.clear()
        self._taps.clear()

    # ------------------------------------------------------------------ live migration

    async def prepare_incoming(
        self, spec: VmSpec, generation: int, listen_address: str
    ) -> IncomingEndpoint:
        held = self._vms.get(spec.name)
        if held is not None and held.generation == generation and held.incoming is not None:
            return held.incoming
        if not listen_address:
            raise DriverError("no address to receive a migration on", retryable=False)
        vm = self._add(spec, generation, ObservedState.INCOMING)
        port = self._next_port
        self._next_port = port + 2 if port + 3 <= 65535 else FIRST_PORT
        vm.incoming = IncomingEndpoint(listen_address, port, port + 1)
        vm.incoming_since_s = self._clock_s()
        vm.console.append(
            f"fake-migration: vm {spec.name} generation {generation} waits for its state on "
            f"{listen_address}:{port}\r\n".encode()
        )
        return vm.incoming

    async def migrate_out(
        self,
        name: str,
        target: IncomingEndpoint,
        *,
        max_downtime_ms: int,
        max_bandwidth_mib_s: int,
    ) -> None:
        vm = self._get(name)
        if vm.state is not ObservedState.RUNNING or vm.outgoing is not None:
            what = "migrating already" if vm.outgoing is not None else vm.state
            raise DriverError(f"vm {name} is {what}, not running", retryable=True)
        if not target.address or not target.migration_port:
            raise DriverError(f"no endpoint to send vm {name} to: {target}", retryable=False)
        bandwidth_mib_s = self.migration.bandwidth_mib_s
        if max_bandwidth_mib_s > 0:
            bandwidth_mib_s = min(bandwidth_mib_s, max_bandwidth_mib_s)
        outgoing = _Outgoing(target, self._clock_s(), migration_size_mib(vm.spec), bandwidth_mib_s)
        vm.outgoing = outgoing
        try:
            duration_s = self.migration.duration_s(outgoing.total_mib, bandwidth_mib_s)
            if duration_s > 0 and math.isfinite(duration_s):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(duration_s):
                        await outgoing.cancelled.wait()
        finally:
            vm.outgoing = None
        if self._vms.get(name) is not vm:
            raise DriverError(f"vm {name} was removed while migrating", retryable=True)
        if outgoing.cancelled.is_set():
            raise DriverError(f"migration of vm {name} cancelled", retryable=True)
        vm.state = ObservedState.HANDED_OVER  # paused here for good
        self._changed(vm)
        vm.console.append(
            f"fake-migration: handed over to {target.address}:{target.migration_port}\r\n".encode()
        )

    def migration_progress(self, name: str) -> MigrationProgress | None:
        vm = self._vms.get(name)
        outgoing = vm.outgoing if vm is not None else None
        if outgoing is None:
            return None
        copying_s = self._clock_s() - outgoing.started_s - self.migration.setup_s
        sent_mib = max(0.0, copying_s) * outgoing.bandwidth_mib_s
        return MigrationProgress(min(outgoing.total_mib, int(sent_mib)), outgoing.total_mib)

    async def cancel_migration(self, name: str) -> None:
        vm = self._vms.get(name)
        if vm is not None and vm.outgoing is not None:
            vm.outgoing.cancelled.set()

    async def finish_incoming(self, name: str) -> None:
        vm = self._get(name)
        if vm.state is not ObservedState.INCOMING:
            raise DriverError(f"vm {name} is {vm.state}, not incoming", retryable=False)
        waited_s = self._clock_s() - vm.incoming_since_s
        if waited_s < self.migration.setup_s:
            raise DriverError(
                f"the state of vm {name} has not arrived: incoming for {waited_s:.2f} s, "
                f"a migration takes at least {self.migration.setup_s:.2f} s",
                retryable=True,
            )
        vm.state, vm.booted, vm.incoming = ObservedState.RUNNING, True, None
        self._changed(vm)
        vm.console.append(f"fake-migration: vm {name} runs here\r\n".encode() + PROMPT)

    # ------------------------------------------------------------------ console

    def console_read(self, name: str, offset: int | None, max_bytes: int) -> ConsoleBytes:
        vm = self._get(name)
        begin, data = vm.console.read(offset, max_bytes)
        return ConsoleBytes(vm.generation, begin, data)

    def console_writable(self, name: str) -> bool:
        return name in self._vms

    async def console_write(self, name: str, data: bytes) -> None:
        self._get(name).type(data)


_: HypervisorDriver = FakeDriver(Resources(1000, 1024))
_migrating: MigratingDriver = FakeDriver(Resources(1000, 1024))
_console: ConsoleDriver = FakeDriver(Resources(1000, 1024))
_replicating: ReplicatingDriver = FakeDriver(Resources(1000, 1024))
