"""Hosts' replica sets as the scheduler's commands leave them: a model of the agent side made of
the parts the agents use (the agent's gate, hostagent/replicagate.py, and the simulated backend,
hostagent/replicasim.py), for tests of the pure core. An update whose base a host does not hold
is ignored, as an agent does; one it holds is applied in O(its size), and must lead to the digest
it names."""

from __future__ import annotations

from collections.abc import Callable

from common.replica_messages import ConfigureReplicas, ReplicaStatus, UpdateReplicas
from hostagent.drivers.fakequorum import DiskLedger
from hostagent.replicagate import ReplicaGate, ReplicaSetCommand as ReplicaSetCommand
from hostagent.replicas import ReplicaError
from hostagent.replicasim import SimulatedReplicas
from hostagent.stimuli import ApplyReplicas, Instruction, Note, ReplicasApplied
from scheduler.core.contract import Action, SendCommands


def replica_commands(actions: list[Action], host: str | None = None) -> list[ReplicaSetCommand]:
    return [
        c
        for a in actions
        if isinstance(a, SendCommands) and (host is None or a.host_id == host)
        for c in a.commands
        if isinstance(c, ConfigureReplicas | UpdateReplicas)
    ]


class HeldReplicas:
    """Each host's agent: its gate and its simulated backend; the copies on the hosts' disks
    are in one ledger, so an agent started again finds them (as the replica server finds its
    files)."""

    def __init__(self, now_s: Callable[[], float]) -> None:
        self.now_s = now_s
        self.ledger = DiskLedger()
        self.gates: dict[str, ReplicaGate] = {}
        self.backends: dict[str, SimulatedReplicas] = {}
        self.ignored = 0
        """Updates a host did not hold the base of."""
        self.applied = 0
        """Updates applied."""

    def backend(self, host: str) -> SimulatedReplicas:
        found = self.backends.get(host)
        if found is None:
            found = self.backends[host] = SimulatedReplicas(
                self.now_s, ledger=self.ledger, host_id=host
            )
        return found

    def digest(self, host: str) -> str:
        gate = self.gates.get(host)
        return gate.digest if gate is not None else ""

    def statuses(self, host: str) -> list[ReplicaStatus]:
        return self.backend(host).statuses()

    def receive(self, host: str, command: ReplicaSetCommand) -> None:
        """What the agent does with a command: its gate lets it through (or ignores it), and the
        backend applies it (at once: the simulated one never waits)."""
        gate = self.gates.setdefault(host, ReplicaGate())
        out: list[Instruction] = []
        gate.receive(command, out)
        while out:
            instruction = out.pop(0)
            if isinstance(instruction, Note) and "ignored" in instruction.event:
                self.ignored += 1
            if isinstance(instruction, ApplyReplicas):
                out += self._apply(host, gate, instruction)
        assert not gate.pending

    def _apply(self, host: str, gate: ReplicaGate, op: ApplyReplicas) -> list[Instruction]:
        backend = self.backend(host)
        config, error = op.config, None
        try:
            if isinstance(config, UpdateReplicas):
                backend.update_now(config)
                self.applied += 1
            else:
                backend.apply_now(config)
        except ReplicaError as exc:
            error = str(exc)
        if error is None:
            assert backend.applied_digest == config.digest
            assert backend.replica_set.digest == config.digest  # the same, whole or by changes
        out: list[Instruction] = []
        gate.applied(ReplicasApplied(config, backend.applied_digest, error), out)
        return out

    def restart(self, host: str) -> None:
        """The agent starts again: it holds no set (it reports ""), its disks keep the copies."""
        self.gates.pop(host, None)
        self.backends.pop(host, None)
