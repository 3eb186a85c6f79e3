"""The scheduler stops even when one of its loops swallows a cancellation (as a
``wait_for`` inside nats-py can on Python 3.11)."""

from __future__ import annotations

import asyncio

from scheduler.shell.stopping import cancel_until_done


async def test_a_loop_that_swallows_one_cancellation_still_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # the first cancellation is lost, the loop goes on

    async def plain() -> None:
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(plain())]
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_until_done(tasks)
    assert swallowed == 1
    assert all(task.cancelled() for task in tasks)
