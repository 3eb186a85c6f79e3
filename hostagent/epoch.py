"""The agent's side of scheduler leadership: obey only the newest leader. Pure.

Every command batch and heartbeat ack carries the epoch of the leadership that sent it (the
revision of the lease it won; it only grows). A deposed leader that has not noticed yet may
still send: once this host has heard from a newer leader, anything from an older one is refused.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class EpochGate:
    """The newest epoch seen, and whether a message from a given epoch may be obeyed."""

    __slots__ = ("newest", "refused")

    def __init__(self) -> None:
        self.newest = 0
        self.refused = 0
        """How many messages were refused (for logs and tests)."""

    def admit(self, epoch: int) -> bool:
        """Observe ``epoch``: True if a message from it may be obeyed (it is the newest seen)."""
        if epoch < self.newest:
            self.refused += 1
            log.warning(
                "message from a deposed leader refused epoch=%d newest=%d", epoch, self.newest
            )
            return False
        if epoch > self.newest:
            if self.newest:
                log.info("new scheduler leader epoch=%d previous=%d", epoch, self.newest)
            self.newest = epoch
        return True
