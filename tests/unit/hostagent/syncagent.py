"""The real agent state over the real FakeDriver, driven synchronously (for pure tests).

Each driver call the state asks for is carried out at once and its result fed back, so a whole
stimulus settles within one call: a valid interleaving of the real agent's concurrent shell.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from common.messages import AgentCommand, Heartbeat, ObservedState
from common.resources import Resources
from hostagent.agent import apply_networks, drive
from hostagent.drivers.fake import FakeDriver, MigrationModel
from hostagent.netsim import SimulatedNetwork
from hostagent.state import AgentState
from hostagent.stimuli import (
    AdmitHeld,
    ApplyNetworks,
    CommandsReceived,
    DriverCancelMigration,
    DriverDestroy,
    DriverFinishIncoming,
    DriverForget,
    DriverMigrateOut,
    DriverPause,
    DriverPrepareIncoming,
    DriverResume,
    DriverSetReplicas,
    DriverStart,
    DriverStop,
    FenceTick,
    HeartbeatDue,
    Instruction,
    OpDone,
    RunCapture,
    SendHeartbeat,
    Stimulus,
)

ROOMY = Resources(10**6, 10**9)
"""A fake hypervisor whose own accounts never refuse."""
INSTANT = MigrationModel(setup_s=0.0, bandwidth_mib_s=math.inf)
"""Live migrations that take no time (the fake driver then never suspends)."""

T = TypeVar("T")


def run_now(coro: Coroutine[object, object, T]) -> T:
    """Run a coroutine that never suspends (the FakeDriver without a start delay)."""
    try:
        coro.send(None)
    except StopIteration as done:
        value: T = done.value
        return value
    raise AssertionError("the fake driver suspended")


@dataclass
class SyncAgent:
    state: AgentState
    driver: FakeDriver = field(default_factory=lambda: FakeDriver(ROOMY, migration=INSTANT))
    network: SimulatedNetwork = field(default_factory=SimulatedNetwork)
    log: list[Instruction] = field(default_factory=list)
    """Every instruction the state gave, driver calls included, in order."""

    def __post_init__(self) -> None:
        self.driver.has_network = self.network.has_network

    def handle(self, stimulus: Stimulus, now: float) -> list[Instruction]:
        """Feed the state and carry out its driver calls; return the other instructions."""
        rest: list[Instruction] = []
        pending = deque(self.state.handle(stimulus, now))
        while pending:
            instruction = pending.popleft()
            self.log.append(instruction)
            match instruction:
                case AdmitHeld(commands=commands):
                    admitted = CommandsReceived(commands, self.driver.inventory())
                    pending.extend(self.state.handle(admitted, now))
                    continue
                case RunCapture():
                    done = OpDone(instruction, self.driver.inventory())
                case ApplyNetworks():
                    applied = apply_networks(self.network, instruction, self.driver.inventory)
                    pending.extend(self.state.handle(run_now(applied), now))
                    continue
                case (
                    DriverStart()
                    | DriverStop()
                    | DriverDestroy()
                    | DriverForget()
                    | DriverPause()
                    | DriverResume()
                    | DriverSetReplicas()
                    | DriverPrepareIncoming()
                    | DriverMigrateOut()
                    | DriverCancelMigration()
                    | DriverFinishIncoming()
                ):
                    done = run_now(drive(self.driver, instruction))
                case _:
                    rest.append(instruction)
                    continue
            pending.extend(self.state.handle(done, now))
        return rest

    def execute(self, commands: Sequence[AgentCommand], now: float) -> list[Instruction]:
        return self.handle(CommandsReceived(commands, self.driver.inventory()), now)

    def fence(self, now: float) -> None:
        self.handle(FenceTick(self.driver.inventory()), now)

    def heartbeat(self, now: float) -> Heartbeat:
        [send] = self.handle(HeartbeatDue(self.driver.inventory()), now)
        assert isinstance(send, SendHeartbeat)
        return send.heartbeat

    def held(self) -> dict[str, tuple[int, ObservedState]]:
        return {
            vm.name: (vm.generation, vm.state)
            for vm in self.state.inventory(self.driver.inventory())
        }
