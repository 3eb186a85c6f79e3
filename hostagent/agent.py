"""The host agent's VM side: commands from the scheduler, the lease, and the fence watchdog.

Commands are idempotent by (vm name, generation) and run in order per VM, while different VMs
proceed concurrently. The lease (renewed by heartbeat acks) guards execution: when it runs out
the watchdog pauses every executing VM (never destroys it), and only the scheduler's word
resumes (``ResumeVm`` at exactly its generation) or removes it (``StopVm``/``DeleteVm``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import assert_never

import msgspec
from nats.aio.msg import Msg

from common import codec
from common.clock import Clock
from common.errors import DriverError
from common.ids import HostId
from common.messages import (
    AgentCommand,
    CaptureDisk,
    DeleteVm,
    ObservedState,
    ObservedVm,
    ResumeVm,
    StartVm,
    StopVm,
    VmSpec,
)
from hostagent.drivers.base import HypervisorDriver
from hostagent.epoch import EpochGate
from hostagent.execlog import ExecEvent, ExecLog

log = logging.getLogger(__name__)

FENCE_CHECK_S = 0.05
"""The watchdog looks at the lease this often (the spec asks for at least every 100 ms)."""

_EXECUTING = (ObservedState.RUNNING, ObservedState.STARTING)


@dataclass(frozen=True)
class Lease:
    """The right to execute VMs, granted by the scheduler's heartbeat acks. Pure.

    An ack for a heartbeat sent at ``sent_at_s`` (monotonic) grants execution until
    ``sent_at_s + fence_after_s``: measured from the send, not from the ack, to stay on the safe
    side of the scheduler's own clock. The ack of the most recently *sent* heartbeat wins, so a
    scheduler that shortens ``fence_after_s`` is obeyed at once and late acks never extend it.
    """

    sent_at_s: float | None = None
    expires_at_s: float = float("-inf")

    @property
    def ever_held(self) -> bool:
        return self.sent_at_s is not None

    def renewed(self, sent_at_s: float, fence_after_s: float) -> Lease:
        if self.sent_at_s is not None and sent_at_s < self.sent_at_s:
            return self
        return Lease(sent_at_s, sent_at_s + fence_after_s)

    def expired(self, now_s: float) -> bool:
        return now_s >= self.expires_at_s


def command_vm_name(command: AgentCommand) -> str:
    return command.vm.name if isinstance(command, StartVm) else command.name


class Agent:
    def __init__(
        self, host_id: HostId, driver: HypervisorDriver, execlog: ExecLog, clock: Clock
    ) -> None:
        self.host_id = host_id
        self.driver = driver
        self._execlog = execlog
        self._clock = clock
        self.lease = Lease()
        self.epochs = EpochGate()  # refuse a deposed scheduler leader's commands and acks
        self.fenced = False
        self.changed = asyncio.Event()
        """Set whenever the inventory or the fenced flag changes (the heartbeat loop clears it)."""
        self._fencing = asyncio.Lock()
        self._failed: dict[str, ObservedVm] = {}
        self._queue: asyncio.Queue[AgentCommand] = asyncio.Queue()
        self._pending: dict[str, deque[AgentCommand]] = {}
        self.capture: Callable[[CaptureDisk, bool], Awaitable[None]] | None = None
        """Carries out CaptureDisk (set by the app when the driver keeps disks)."""
        self.on_lease: Callable[[Lease], None] | None = None
        """Told of every renewal (the app publishes the lease to the host's fence guard)."""

    # ------------------------------------------------------------------ inventory

    def inventory(self) -> list[ObservedVm]:
        """Every VM held: the driver's, plus failed starts kept until the scheduler clears them."""
        vms = self.driver.inventory() + list(self._failed.values())
        return sorted(vms, key=lambda vm: vm.name)

    def _held(self, name: str) -> ObservedVm | None:
        failed = self._failed.get(name)
        if failed is not None:
            return failed
        return next((vm for vm in self.driver.inventory() if vm.name == name), None)

    def _record(self, vm: str, generation: int, event: ExecEvent) -> None:
        self._execlog.record(vm, generation, event)
        self.changed.set()

    # ------------------------------------------------------------------ lease and fencing

    def renew_lease(self, sent_at_s: float, fence_after_s: float) -> None:
        self.lease = self.lease.renewed(sent_at_s, fence_after_s)
        if self.on_lease is not None:
            self.on_lease(self.lease)
        if self.fenced and not self.lease.expired(self._clock.monotonic_s()):
            self.fenced = False
            self.changed.set()
            log.info("lease renewed, unfenced host_id=%s", self.host_id)

    async def enforce_lease(self) -> None:
        """Without a valid lease, pause every executing VM (paused, never destroyed)."""
        async with self._fencing:  # the watchdog and a fresh start may both get here
            now_s = self._clock.monotonic_s()
            if not self.lease.expired(now_s):
                return
            executing = [vm for vm in self.driver.inventory() if vm.state in _EXECUTING]
            if not self.fenced and (self.lease.ever_held or executing):
                self.fenced = True
                self.changed.set()
                log.warning(
                    "lease expired, fencing host_id=%s executing=%d expired_for_s=%.2f",
                    self.host_id,
                    len(executing),
                    now_s - self.lease.expires_at_s if self.lease.ever_held else 0.0,
                )
            for vm in executing:
                await self._pause(vm)

    async def _pause(self, vm: ObservedVm) -> None:
        try:
            await self.driver.pause(vm.name)
        except DriverError as exc:
            log.error("vm pause failed vm=%s generation=%d error=%s", vm.name, vm.generation, exc)
            return
        self._record(vm.name, vm.generation, ExecEvent.PAUSE)
        log.info("vm fenced vm=%s generation=%d", vm.name, vm.generation)

    async def run_fence_watchdog(self) -> None:
        while True:
            await self.enforce_lease()
            await asyncio.sleep(FENCE_CHECK_S)

    # ------------------------------------------------------------------ command intake

    async def on_commands(self, msg: Msg) -> None:
        """Subscription callback: decode, check the host id, queue. Never raises on bad input."""
        try:
            batch = codec.host_commands.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("malformed commands dropped subject=%s error=%s", msg.subject, exc)
            return
        if batch.host_id != self.host_id:
            log.warning(
                "commands for another host dropped subject=%s host_id=%s",
                msg.subject,
                batch.host_id,
            )
            return
        if not self.epochs.admit(batch.epoch):
            return
        self.submit(self._leased(batch.commands))

    def _leased(self, commands: list[AgentCommand]) -> list[AgentCommand]:
        """Drop starts and resumes that arrive while the lease is expired: sent before a
        partition healed, they may already run elsewhere, and an ack arriving right behind them
        would otherwise let them run. The scheduler resends them while they are still due."""
        if not self.lease.expired(self._clock.monotonic_s()):
            return commands
        kept: list[AgentCommand] = [c for c in commands if not isinstance(c, StartVm | ResumeVm)]
        if len(kept) < len(commands):
            log.info(
                "commands refused without a lease host_id=%s refused=%d",
                self.host_id,
                len(commands) - len(kept),
            )
        return kept

    def submit(self, commands: list[AgentCommand]) -> None:
        for command in commands:
            self._queue.put_nowait(command)

    async def run_commands(self) -> None:
        """Run queued commands: in order for each VM, concurrently across VMs."""
        async with asyncio.TaskGroup() as tg:
            while True:
                command = await self._queue.get()
                name = command_vm_name(command)
                pending = self._pending.get(name)
                if pending is None:
                    pending = self._pending[name] = deque()
                    tg.create_task(self._run_vm_commands(name, pending), name=f"vm-{name}")
                pending.append(command)

    async def _run_vm_commands(self, name: str, pending: deque[AgentCommand]) -> None:
        try:
            while pending:
                await self.execute(pending[0])
                pending.popleft()
        finally:
            del self._pending[name]

    def idle(self) -> bool:
        """No command is queued or running (for tests)."""
        return self._queue.empty() and not self._pending

    # ------------------------------------------------------------------ command execution

    async def execute(self, command: AgentCommand) -> None:
        """Carry out one command; a stale or repeated one changes nothing."""
        match command:
            case StartVm(vm=spec, generation=generation):
                await self._start(spec, generation)
            case StopVm(name=name, generation=generation):
                await self._remove(name, generation, destroy=False)
            case DeleteVm(name=name, generation=generation):
                await self._remove(name, generation, destroy=True)
            case ResumeVm(name=name, generation=generation):
                await self._resume(name, generation)
            case CaptureDisk():
                await self._capture(command)
            case _:
                assert_never(command)

    async def _capture(self, command: CaptureDisk) -> None:
        if self.capture is None:
            log.error("capture unsupported vm=%s image=%s", command.name, command.image)
            return
        await self.capture(command, self._held(command.name) is not None)

    async def _start(self, spec: VmSpec, generation: int) -> None:
        held = self._held(spec.name)
        if held is not None:
            if held.generation == generation:
                log.debug("start ignored, already held vm=%s generation=%d", spec.name, generation)
                return
            if held.generation > generation:
                log.info(
                    "stale start ignored vm=%s generation=%d held_generation=%d",
                    spec.name,
                    generation,
                    held.generation,
                )
                return
            if not await self._discard(held, destroy=True):
                return
        await self._launch(spec, generation)

    async def _launch(self, spec: VmSpec, generation: int) -> None:
        name = spec.name
        if self.lease.expired(self._clock.monotonic_s()):
            # A start delivered late (after a partition) may already run elsewhere: without a
            # lease nothing starts, not even for a moment; the scheduler resends it if still due.
            log.info("start refused without a lease vm=%s generation=%d", name, generation)
            return
        log.info("vm starting vm=%s generation=%d size=%s", name, generation, spec.size)
        self._record(name, generation, ExecEvent.START)
        try:
            await self.driver.start(spec, generation)
        except DriverError as exc:
            self._failed[name] = ObservedVm(
                name=name,
                generation=generation,
                state=ObservedState.FAILED,
                cpu_milli=spec.cpu_milli,
                mem_mib=spec.mem_mib,
                reason=str(exc),
                retryable=exc.retryable,
            )
            self._record(name, generation, ExecEvent.FAIL)
            log.error("vm start failed vm=%s generation=%d error=%s", name, generation, exc)
            return
        held = self._held(name)
        if held is not None and held.state is ObservedState.RUNNING:
            self._record(name, generation, ExecEvent.RUNNING)
            log.info("vm running vm=%s generation=%d", name, generation)
            await self.enforce_lease()  # started without a lease: paused right away
        else:
            self.changed.set()
            log.info("vm started paused vm=%s generation=%d", name, generation)

    async def _remove(self, name: str, generation: int, *, destroy: bool) -> None:
        held = self._held(name)
        if held is None:
            if destroy:
                await self._forget(name, generation)
            log.debug("remove of vm not running here vm=%s generation=%d", name, generation)
            return
        if held.generation > generation:
            log.info(
                "stale %s ignored vm=%s generation=%d held_generation=%d",
                "delete" if destroy else "stop",
                name,
                generation,
                held.generation,
            )
            return
        await self._discard(held, destroy=destroy)

    async def _forget(self, name: str, generation: int) -> None:
        """A deleted VM that is not running here may still have disks here: remove them."""
        try:
            await self.driver.forget(name, generation)
        except DriverError as exc:
            log.error("vm disks not removed vm=%s generation=%d error=%s", name, generation, exc)

    async def _discard(self, held: ObservedVm, *, destroy: bool) -> bool:
        """Stop or destroy a held VM and forget it; False when the driver failed."""
        name, generation = held.name, held.generation
        if self._failed.pop(name, None) is not None:
            self.changed.set()
            log.info("failed vm cleared vm=%s generation=%d", name, generation)
            return True
        try:
            await (self.driver.destroy(name) if destroy else self.driver.stop(name))
        except DriverError as exc:
            verb = "destroy" if destroy else "stop"
            log.error("vm %s failed vm=%s generation=%d error=%s", verb, name, generation, exc)
            return False
        self._record(name, generation, ExecEvent.DESTROY if destroy else ExecEvent.STOP)
        log.info(
            "vm %s vm=%s generation=%d", "destroyed" if destroy else "stopped", name, generation
        )
        return True

    async def _resume(self, name: str, generation: int) -> None:
        held = self._held(name)
        if held is None or held.generation != generation or held.state is not ObservedState.PAUSED:
            log.debug("resume ignored vm=%s generation=%d held=%s", name, generation, held)
            return
        if self.lease.expired(self._clock.monotonic_s()):
            log.info("resume refused without a lease vm=%s generation=%d", name, generation)
            return
        self._record(name, generation, ExecEvent.RESUME)
        try:
            await self.driver.resume(name)
        except DriverError as exc:
            self._record(name, generation, ExecEvent.PAUSE)
            log.error("vm resume failed vm=%s generation=%d error=%s", name, generation, exc)
            return
        log.info("vm resumed vm=%s generation=%d", name, generation)
