"""Shell retries: a NATS failure is tried again, anything else (and a cancel) is not."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats.errors
import pytest
import stamina

from scheduler.shell.retry import retry_while_nats_down


@pytest.fixture(autouse=True)
def no_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=5):
        yield


async def test_a_nats_failure_is_retried_until_the_call_succeeds() -> None:
    failures = [nats.errors.NoServersError(), nats.errors.TimeoutError()]

    @retry_while_nats_down("test call")
    async def call() -> str:
        if failures:
            raise failures.pop()
        return "done"

    assert await call() == "done"
    assert failures == []


async def test_another_error_goes_straight_through() -> None:
    calls: list[None] = []

    @retry_while_nats_down("test call")
    async def call() -> None:
        calls.append(None)
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await call()
    assert len(calls) == 1


async def test_a_cancel_is_never_swallowed() -> None:
    started = asyncio.Event()

    @retry_while_nats_down("test call")
    async def call() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
