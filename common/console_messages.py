"""Wire schemas of the serial console (re-exported by common/messages.py)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from common.fields import ErrorBody

# --------------------------------------------------------------------------- console
# stratus.console.<host>.<vm>.out carries ConsoleEvent (the agent running the VM publishes);
# .tail (ConsoleTail -> ConsoleReply) and .in (ConsoleInput -> ConsoleReply) are requests the
# same agent answers. Offsets count bytes of the VM's console output since it last started.

MAX_CONSOLE_TAIL_BYTES = 256 * 1024
"""The most recent output one tail request returns (base64 in JSON stays under 1 MiB)."""
MAX_CONSOLE_INPUT_BYTES = 4096


class ConsoleOutput(msgspec.Struct, tag="output", kw_only=True):
    """Bytes the VM wrote to its serial console, starting at byte ``offset`` of its output."""

    vm: str
    generation: int
    offset: Annotated[int, msgspec.Meta(ge=0)]
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


class ConsoleClosed(msgspec.Struct, tag="closed", kw_only=True):
    """The VM no longer runs on this host (stopped, deleted, moved): no more output here."""

    vm: str
    generation: int
    reason: str = ""


ConsoleEvent = ConsoleOutput | ConsoleClosed


class ConsoleTail(msgspec.Struct, kw_only=True):
    """Ask for the VM's most recent console output (at most ``max_bytes``)."""

    max_bytes: Annotated[int, msgspec.Meta(ge=0, le=MAX_CONSOLE_TAIL_BYTES)] = 64 * 1024


class ConsoleInput(msgspec.Struct, kw_only=True):
    """Bytes typed on the VM's serial console."""

    data: Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_CONSOLE_INPUT_BYTES)]


class ConsoleReply(msgspec.Struct, omit_defaults=True):
    output: ConsoleOutput | None = None
    """Tail: the recent output (its ``end`` is where live output continues)."""
    writable: bool = False
    """The driver relays input to this VM's console."""
    error: ErrorBody | None = None
