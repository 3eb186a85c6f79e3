"""The lease: the right to execute VMs, granted by the scheduler's heartbeat acks. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    """An ack for a heartbeat sent at ``sent_at_s`` (monotonic) grants execution until
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
