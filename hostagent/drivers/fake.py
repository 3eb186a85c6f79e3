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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import DriverError
from common.messages import ObservedState, ObservedVm, VmSpec
from common.resources import ZERO, Resources
from hostagent.drivers.base import ConsoleBytes, ConsoleDriver, HypervisorDriver
from hostagent.drivers.consolebuf import ConsoleBuffer
from hostagent.network import tap_name

PROMPT = b"# "


@dataclass
class _FakeVm:
    spec: VmSpec
    generation: int
    state: ObservedState
    booted: bool = False
    console: ConsoleBuffer = field(default_factory=ConsoleBuffer)
    typed: bytearray = field(default_factory=bytearray)
    """The line being typed on the console (not yet ended by CR or LF)."""

    @property
    def resources(self) -> Resources:
        return Resources(self.spec.cpu_milli, self.spec.mem_mib)

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
    name: str = "fake"

    def __init__(
        self, capacity: Resources, *, cpu_overcommit: float = 1.0, start_delay_s: float = 0.0
    ) -> None:
        self.capacity = capacity
        self.cpu_overcommit = cpu_overcommit
        self.start_delay_s = start_delay_s
        self.has_network: Callable[[int], bool] | None = None
        """Whether the network with that VNI is in place (None: no network is checked)."""
        self._vms: dict[str, _FakeVm] = {}
        self._taps: dict[str, str] = {}
        """The taps of the VMs held: tap name -> VM."""

    def allocated(self) -> Resources:
        """What every held VM (starting, running or paused) takes from the host."""
        return sum((vm.resources for vm in self._vms.values()), ZERO)

    async def start(self, spec: VmSpec, generation: int) -> None:
        if spec.name in self._vms:
            raise DriverError(f"vm {spec.name} already exists on this host", retryable=False)
        self._check_fits(spec)
        taps = self._check_nics(spec)
        vm = _FakeVm(spec, generation, ObservedState.STARTING)
        vm.boot_log(ready=False)
        self._vms[spec.name] = vm
        self._taps.update(dict.fromkeys(taps, spec.name))
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

    def _check_fits(self, spec: VmSpec) -> None:
        used = self.allocated()
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
        for nic in vm.spec.nics if vm is not None else ():
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

    async def resume(self, name: str) -> None:
        vm = self._get(name)
        if vm.state is ObservedState.PAUSED:
            vm.state = ObservedState.RUNNING if vm.booted else ObservedState.STARTING

    def inventory(self) -> list[ObservedVm]:
        return [
            ObservedVm(
                name=vm.spec.name,
                generation=vm.generation,
                state=vm.state,
                cpu_milli=vm.spec.cpu_milli,
                mem_mib=vm.spec.mem_mib,
            )
            for vm in self._vms.values()
        ]

    async def close(self) -> None:
        self._vms.clear()
        self._taps.clear()

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
_console: ConsoleDriver = FakeDriver(Resources(1000, 1024))
