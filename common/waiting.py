"""Wait until something holds, up to a deadline: the one polling loop the services, the CLI,
the tests and the benchmarks share.

``poll``/``poll_sync`` call a probe until it returns a value (anything but None) and return
that value, or None once ``timeout_s`` has passed; a probe that raises ends the wait with its
error (a child that died, say). ``wait_until`` waits for a predicate and raises ``WaitTimeout``
naming what it waited for. The probe always runs at least once, and once more after the
deadline passed, so a condition that came true during the last interval still counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A ``wait_until`` condition did not hold within its timeout."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """A moment on the monotonic clock (``at_s``), with how long is left until it."""

    at_s: float

    @classmethod
    def after(cls, timeout_s: float) -> Deadline:
        return cls(time.monotonic() + timeout_s)

    def remaining_s(self) -> float:
        return max(0.0, self.at_s - time.monotonic())

    def passed(self) -> bool:
        return time.monotonic() >= self.at_s


async def poll(
    probe: Callable[[], Awaitable[T | None]], *, timeout_s: float, interval_s: float
) -> T | None:
    """Await ``probe()`` every ``interval_s`` until it returns a value; None after
    ``timeout_s``."""
    deadline = Deadline.after(timeout_s)
    while True:
        expired = deadline.passed()
        result = await probe()
        if result is not None or expired:
            return result
        await asyncio.sleep(interval_s)


def poll_sync(probe: Callable[[], T | None], *, timeout_s: float, interval_s: float) -> T | None:
    """``poll`` for code without an event loop: sleeps the thread between calls."""
    deadline = Deadline.after(timeout_s)
    while True:
        expired = deadline.passed()
        result = probe()
        if result is not None or expired:
            return result
        time.sleep(interval_s)


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_s: float,
    interval_s: float,
    message: str = "condition",
) -> None:
    """Return once ``predicate`` is true; ``WaitTimeout`` if it is still false after
    ``timeout_s``."""

    async def probe() -> bool | None:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        return True if result else None

    if await poll(probe, timeout_s=timeout_s, interval_s=interval_s) is None:
        raise WaitTimeout(f"timed out after {timeout_s}s waiting for {message}")
