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

from common.replica_messages import ConfigureReplicas, UpdateReplicas
from hostagent.ordergate import OrderGate
from hostagent.stimuli import ApplyReplicas, Instruction, Note, ReplicasApplied

ReplicaSetCommand = ConfigureReplicas | UpdateReplicas


class ReplicaGate(OrderGate[ReplicaSetCommand]):
    __slots__ = ()

    what = "replica"

    def _base(self, config: ReplicaSetCommand) -> str | None:
        return config.base if isinstance(config, UpdateReplicas) else None

    def _apply(self, config: ReplicaSetCommand) -> Instruction:
        return ApplyReplicas(config)

    def applied(self, done: ReplicasApplied, out: list[Instruction]) -> bool:
        """The backend is done; True when the applied digest changed (the report did)."""
        changed = self._done(done.digest)
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
        self._go_on(out)
        return changed
