"""The agent's side of scheduler leadership: obey only the newest leader. Pure.

Every command batch and heartbeat ack carries the epoch of the leadership that sent it (the
revision of the lease it won; it only grows). A deposed leader that has not noticed yet may
still send: once this host has heard from a newer leader, anything from an older one is refused.
``AgentState`` holds one gate; ``from_leader`` turns its verdicts into log notes.
"""

from __future__ import annotations

from enum import Enum

from hostagent.stimuli import Instruction, Note


class Verdict(Enum):
    SAME = "same"
    NEWER = "newer"
    """A new leader: obeyed, and from now on older epochs are refused."""
    REFUSED = "refused"


class EpochGate:
    """The newest epoch seen, and whether a message from a given epoch may be obeyed."""

    __slots__ = ("newest", "refused")

    def __init__(self) -> None:
        self.newest = 0
        self.refused = 0
        """How many messages were refused (for logs and tests)."""

    def judge(self, epoch: int) -> Verdict:
        """Observe ``epoch``: REFUSED if a newer leader has been heard from already."""
        if epoch < self.newest:
            self.refused += 1
            return Verdict.REFUSED
        if epoch > self.newest:
            self.newest = epoch
            return Verdict.NEWER
        return Verdict.SAME

    def admit(self, epoch: int) -> bool:
        """Observe ``epoch``: True if a message from it may be obeyed."""
        return self.judge(epoch) is not Verdict.REFUSED


def from_leader(gate: EpochGate, epoch: int, what: str, out: list[Instruction]) -> bool:
    """Judge ``what`` (commands, an ack) from ``epoch``: True if it may be obeyed."""
    match gate.judge(epoch):
        case Verdict.REFUSED:
            out.append(
                Note.warning(
                    "%s from a deposed leader refused epoch=%d newest=%d",
                    what,
                    epoch,
                    gate.newest,
                )
            )
            return False
        case Verdict.NEWER if epoch > 1:
            out.append(Note.info("scheduler leader epoch=%d", epoch))
    return True
