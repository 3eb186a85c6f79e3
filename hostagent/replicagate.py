"""The agent's view of the replicas its host serves: which set is applied and which commands
wait to be. Pure (part of :class:`hostagent.state.AgentState`).

Like ``ConfigureNetworks`` and ``UpdateNetworks``, ``ConfigureReplicas`` (the whole set) and
``UpdateReplicas`` (what changed since the set named ``base``) are host-level commands: one is
applied at a time, the others wait in order (a whole set drops those before it: it replaces
them). An update applies only to the set it is based on: one that is not (the agent restarted,
a message was lost or came out of order) is ignored, and the agent keeps reporting its digest,
so the scheduler sends the whole set. The applied digest goes into every heartbeat. Replicas
are not the business of any one VM: no VM command waits for them (the scheduler sends a VM its
replicas only once they are reported ready).
"""

from __future__ import annotations

from collections import deque

from common.replica_messages import ConfigureReplicas, UpdateReplicas
from hostagent.stimuli import ApplyReplicas, Instruction, Note, ReplicasApplied

ReplicaSetCommand = ConfigureReplicas | UpdateReplicas


class ReplicaGate:
    __slots__ = ("_applying", "_next", "digest")

    def __init__(self) -> None:
        self.digest = ""
        """The digest of the set applied ("" before the first)."""
        self._applying: ReplicaSetCommand | None = None
        self._next: deque[ReplicaSetCommand] = deque()

    @property
    def pending(self) -> bool:
        return self._applying is not None

    def receive(self, config: ReplicaSetCommand, out: list[Instruction]) -> None:
        """A set or an update arrived: applied now, or after those before it."""
        if self._applying is not None:
            if isinstance(config, ConfigureReplicas):
                self._next.clear()
            self._next.append(config)
            return
        self._start(config, out)

    def _start(self, config: ReplicaSetCommand, out: list[Instruction]) -> None:
        if isinstance(config, UpdateReplicas) and config.base != self.digest:
            out.append(
                Note.info(
                    "replica update ignored base=%s digest=%s held=%s",
                    config.base,
                    config.digest,
                    self.digest,
                )
            )
            return
        self._applying = config
        out.append(ApplyReplicas(config))

    def applied(self, done: ReplicasApplied, out: list[Instruction]) -> bool:
        """The backend is done; True when the applied digest changed (the report did)."""
        self._applying = None
        changed = done.digest != self.digest
        self.digest = done.digest
        config = done.config
        if done.error is not None:
            out.append(
                Note.error("replicas not applied digest=%s error=%s", config.digest, done.error)
            )
        elif isinstance(config, UpdateReplicas):
            out.append(
                Note.debug(
                    "replicas updated digest=%s added=%d changed=%d removed=%d",
                    done.digest,
                    len(config.added),
                    len(config.changed),
                    len(config.removed),
                )
            )
        else:
            out.append(
                Note.info(
                    "replicas applied digest=%s replicas=%d", done.digest, len(config.replicas)
                )
            )
        while self._next and self._applying is None:
            self._start(self._next.popleft(), out)
        return changed
