"""The one polling helper: a value as soon as the probe has one, None or ``WaitTimeout`` once
the deadline passed, the probe's own error at once."""

from __future__ import annotations

import itertools

import pytest

from common.waiting import Deadline, WaitTimeout, poll, poll_sync, wait_until


def test_a_deadline_counts_down_and_passes() -> None:
    assert Deadline.after(60).remaining_s() > 59
    assert not Deadline.after(60).passed()
    assert Deadline.after(0).passed()
    assert Deadline.after(-5).remaining_s() == 0.0


def test_poll_sync_returns_the_first_value_the_probe_has() -> None:
    calls = itertools.count(1)
    assert poll_sync(lambda: n if (n := next(calls)) >= 3 else None, timeout_s=5, interval_s=0) == 3


def test_poll_sync_gives_none_after_the_timeout_having_probed_at_least_once() -> None:
    calls: list[None] = []
    assert poll_sync(lambda: calls.append(None), timeout_s=0, interval_s=0) is None
    assert len(calls) == 1


def test_a_false_value_is_a_value() -> None:
    assert poll_sync(lambda: False, timeout_s=5, interval_s=0) is False


def test_an_error_in_the_probe_ends_the_wait_at_once() -> None:
    def probe() -> None:
        raise ChildProcessError("child exited")

    with pytest.raises(ChildProcessError, match="child exited"):
        poll_sync(probe, timeout_s=60, interval_s=0)


async def test_poll_awaits_the_probe() -> None:
    calls = itertools.count(1)

    async def probe() -> int | None:
        n = next(calls)
        return n if n >= 2 else None

    assert await poll(probe, timeout_s=5, interval_s=0) == 2


async def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(WaitTimeout, match="the moon"):
        await wait_until(lambda: False, timeout_s=0.05, interval_s=0.01, message="the moon")


async def test_wait_until_takes_an_async_predicate() -> None:
    async def ready() -> bool:
        return True

    await wait_until(ready, timeout_s=0, interval_s=0)
