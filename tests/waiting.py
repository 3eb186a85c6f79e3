"""Synchronise tests on conditions, never on sleeps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from common import waiting


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_s: float = 5.0,
    interval_s: float = 0.02,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout_s``."""
    try:
        await waiting.wait_until(
            predicate, timeout_s=timeout_s, interval_s=interval_s, message=message
        )
    except waiting.WaitTimeout as exc:
        raise AssertionError(str(exc)) from None
