"""A scheduler stopped while it connects ends even if its first cancellation is lost."""

from __future__ import annotations

import asyncio

from scheduler.__main__ import cancel_until_done


async def test_a_start_up_that_loses_its_first_cancellation_still_ends() -> None:
    lost = 0
    started = asyncio.Event()

    async def connecting() -> None:
        nonlocal lost
        started.set()
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if lost == 0:  # as nats-py's connect can: the cancellation is swallowed
                    lost += 1
                    continue
                raise

    run = asyncio.ensure_future(connecting())
    await started.wait()
    cancel_until_done(run)
    done, _ = await asyncio.wait({run}, timeout=5)
    assert done == {run} and run.cancelled() and lost == 1
