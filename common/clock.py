"""Time as an input: the shell reads a Clock and hands ``now`` to the pure core."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def monotonic_s(self) -> float: ...

    def utcnow(self) -> datetime: ...


class SystemClock:
    def monotonic_s(self) -> float:
        return time.monotonic()

    def utcnow(self) -> datetime:
        return datetime.now(UTC)


_: Clock = SystemClock()
