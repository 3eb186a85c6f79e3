"""Host-level commands that come whole or as changes, applied one at a time. Pure.

A host's network configuration and its replica set each come as a whole (``ConfigureNetworks``,
``ConfigureReplicas``) or as an update against the digest the host holds (``UpdateNetworks``,
``UpdateReplicas``). One is applied at a time and the others wait in order; a whole one drops
those before it (it replaces them). An update applies only to what it is based on: one that is
not (the agent restarted, a message was lost or came out of order) is ignored, and the agent
keeps reporting its digest, so the scheduler sends the whole. ``NetworkGate`` and
``ReplicaGate`` are this gate with what their commands need besides.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar

from hostagent.stimuli import Instruction, Note


class Command(Protocol):
    @property
    def digest(self) -> str: ...


C = TypeVar("C", bound=Command)


class OrderGate(Generic[C]):
    __slots__ = ("_applying", "_next", "digest")

    what = "command"
    """What the commands configure, for the notes."""

    def __init__(self) -> None:
        self.digest = ""
        """The digest of what is applied ("" before the first)."""
        self._applying: C | None = None
        self._next: deque[C] = deque()

    @property
    def pending(self) -> bool:
        """A command is being applied."""
        return self._applying is not None

    def receive(self, config: C, out: list[Instruction]) -> None:
        """A whole or an update arrived: applied now, or after those before it."""
        if self._applying is not None:
            if self._base(config) is None:  # a whole one replaces those before it
                self._next.clear()
            self._next.append(config)
            return
        self._start(config, out)

    def _base(self, config: C) -> str | None:
        """The digest an update is based on; None for a whole one."""
        raise NotImplementedError

    def _apply(self, config: C) -> Instruction:
        """The instruction that has the backend apply ``config``."""
        raise NotImplementedError

    def _start(self, config: C, out: list[Instruction]) -> None:
        base = self._base(config)
        if base is not None and base != self.digest:
            out.append(
                Note.info(
                    "%s update ignored base=%s digest=%s held=%s",
                    self.what,
                    base,
                    config.digest,
                    self.digest,
                )
            )
            return
        self._applying = config
        out.append(self._apply(config))

    def _done(self, digest: str) -> bool:
        """The backend is done with the command being applied, which left ``digest`` in
        place; True when that changed it (the report did)."""
        self._applying = None
        changed = digest != self.digest
        self.digest = digest
        return changed

    def _go_on(self, out: list[Instruction]) -> None:
        """Start the next command waiting, if any (ignored updates are passed over)."""
        while self._next and self._applying is None:
            self._start(self._next.popleft(), out)
