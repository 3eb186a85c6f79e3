"""The agent's claim on its host id: one agent per host id. Pure.

The scheduler takes a new boot id under a known host id only once the boot holding it has been
silent for ``claim_after_s`` (the same host's agent restarted); while the holder is alive, each
heartbeat of the newcomer is answered with a refusal. So until an ack accepts this agent's boot,
it may be a second agent beside a live one, and it executes nothing: commands that arrive are
held (a restarted agent carries them out once accepted). An agent refused for longer than the
holder would need to fall silent is a second claimant: it drops what it held and is told to
exit (:class:`~hostagent.stimuli.ClaimRefused`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from enum import StrEnum

from common.messages import AgentCommand, HeartbeatAck
from hostagent.stimuli import AdmitHeld, ClaimRefused, Instruction, Note

MAX_HELD = 4096
"""Commands held while the claim is pending (the oldest go first: the scheduler resends)."""


class ClaimStatus(StrEnum):
    PENDING = "pending"
    """No ack has accepted this boot yet (or the last answer refused it)."""
    HELD = "held"
    REFUSED = "refused"
    """Refused for good: another live agent holds the host id; this one exits."""


class HostClaim:
    __slots__ = ("_held", "refused_since_s", "status")

    def __init__(self) -> None:
        self.status = ClaimStatus.PENDING
        self.refused_since_s: float | None = None
        self._held: deque[AgentCommand] = deque(maxlen=MAX_HELD)

    @property
    def admitted(self) -> bool:
        """Commands may be carried out: the scheduler accepted this boot as the host's agent."""
        return self.status is ClaimStatus.HELD

    def hold(self, commands: Sequence[AgentCommand], out: list[Instruction]) -> None:
        """Commands that arrive before the claim is accepted: kept, or dropped once refused."""
        if self.status is ClaimStatus.REFUSED:
            out.append(Note.debug("commands dropped, host id refused count=%d", len(commands)))
            return
        self._held.extend(commands)
        out.append(Note.debug("commands held until the host id is ours count=%d", len(commands)))

    def accepted(self, out: list[Instruction]) -> None:
        """An ack accepted this boot: the held commands are carried out now."""
        if self.status is ClaimStatus.REFUSED:
            return
        self.status, self.refused_since_s = ClaimStatus.HELD, None
        if self._held:
            out.append(AdmitHeld(tuple(self._held)))
            self._held.clear()

    def refused(
        self, ack: HeartbeatAck, grace_s: float, now_s: float, out: list[Instruction]
    ) -> None:
        """An ack refused this boot. Within ``grace_s`` of the first refusal the holder may be
        this host's previous agent, about to be judged silent; after it, it is alive."""
        if self.status is ClaimStatus.REFUSED:
            return
        self.status = ClaimStatus.PENDING
        if self.refused_since_s is None:
            self.refused_since_s = now_s
            out.append(Note.warning("heartbeat refused, waiting reason=%s", ack.refused))
        if now_s - self.refused_since_s > grace_s:
            self.status = ClaimStatus.REFUSED
            self._held.clear()
            out.append(ClaimRefused(ack.refused))
