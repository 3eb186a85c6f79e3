"""The agent's view of the replicas its host serves: which ``ConfigureReplicas`` is applied and
which is being applied. Pure (part of :class:`hostagent.state.AgentState`).

Like ``ConfigureNetworks``, a ``ConfigureReplicas`` is the host's whole desired state: one is
applied at a time, and the newest that arrived meanwhile goes next (older ones are skipped).
The applied digest goes into every heartbeat; the scheduler sends the set again while it
differs. Replicas are not the business of any one VM: no VM command waits for them (the
scheduler sends a VM its replicas only once they are reported ready).
"""

from __future__ import annotations

from common.replica_messages import ConfigureReplicas
from hostagent.stimuli import ApplyReplicas, Instruction, Note, ReplicasApplied


class ReplicaGate:
    __slots__ = ("_applying", "_next", "digest")

    def __init__(self) -> None:
        self.digest = ""
        """The digest of the last set applied in full ("" before the first)."""
        self._applying: ConfigureReplicas | None = None
        self._next: ConfigureReplicas | None = None

    @property
    def pending(self) -> bool:
        return self._applying is not None

    def receive(self, config: ConfigureReplicas, out: list[Instruction]) -> None:
        """A set arrived: applied now, or after the one being applied."""
        if self._applying is not None:
            self._next = config
            return
        self._applying = config
        out.append(ApplyReplicas(config))

    def applied(self, done: ReplicasApplied, out: list[Instruction]) -> bool:
        """The backend is done; True when the applied digest changed (the report did)."""
        self._applying = None
        changed = done.digest != self.digest
        self.digest = done.digest
        if done.error is not None:
            out.append(
                Note.error(
                    "replicas not applied digest=%s error=%s", done.config.digest, done.error
                )
            )
        else:
            out.append(
                Note.info(
                    "replicas applied digest=%s replicas=%d",
                    done.digest,
                    len(done.config.replicas),
                )
            )
        following, self._next = self._next, None
        if following is not None:
            self.receive(following, out)
        return changed
