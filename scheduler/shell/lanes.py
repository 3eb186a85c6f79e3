"""The core loop's inputs in two lanes: what hosts and the clock say before what clients ask.

One first-in-first-out queue let a burst of requests hold back every heartbeat: in
``bench.e2e`` the jobs consumer put 10,000 jobs in the queue at once; at 2,048 inputs and half
a second a step, no heartbeat reached the core for 11 s, every host's lease expired (its VMs
fenced) and hosts were declared dead while they ran. So:

- the **host lane** holds heartbeats, ticks and reconnections (at most one heartbeat per host
  is ever acted on, see ``SchedulerApp._latest_heartbeats``, so it stays about as long as the
  fleet is large);
- the **request lane** holds mutations: API and HTTP requests, jobs, captured images.

A step takes the host lane first, but while requests wait at most three quarters of a batch
from it, so a fleet larger than a batch never starves the requests either. Each lane keeps its
own order; nothing orders a request against a heartbeat (the core is level-triggered: a host's
report says all it holds, whenever it comes).

The jobs consumer asks for room before fetching (``room_for_requests``): jobs wait in their
durable stream, not in memory, while the request lane is a batch long (held in memory they also
outlived the stream's ack wait and came again).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

from scheduler.core.contract import Input, InvalidJob, Mutation

REQUESTS: Final = (Mutation, InvalidJob)
"""The inputs of the request lane (a tuple: ``isinstance`` checks one faster than a union)."""
REQUESTS_FIRST_SHARE = 4
"""While requests wait, a step leaves them at least 1 / this of its batch."""


class Lanes:
    def __init__(self) -> None:
        self.hosts: deque[Input] = deque()
        self.requests: deque[Input] = deque()
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()

    def put_nowait(self, item: Input) -> None:
        (self.requests if isinstance(item, REQUESTS) else self.hosts).append(item)
        self._arrived.set()

    def empty(self) -> bool:
        return not self.hosts and not self.requests

    def qsize(self) -> int:
        return len(self.hosts) + len(self.requests)

    async def take(self, most: int) -> list[Input]:
        """Wait for an input, then take up to ``most``: the host lane's first."""
        while self.empty():
            self._arrived.clear()
            await self._arrived.wait()
        return self.take_nowait(most)

    def take_nowait(self, most: int) -> list[Input]:
        """Up to ``most`` inputs, the host lane's first (none when both are empty)."""
        left_for_requests = min(len(self.requests), most // REQUESTS_FIRST_SHARE)
        items = _pop(self.hosts, most - left_for_requests)
        items += _pop(self.requests, most - len(items))
        self._taken.set()
        return items

    async def room_for_requests(self, most: int) -> None:
        """Return once fewer than ``most`` requests wait."""
        while len(self.requests) >= most:
            self._taken.clear()
            await self._taken.wait()


def _pop(lane: deque[Input], most: int) -> list[Input]:
    count = min(len(lane), most)
    return [lane.popleft() for _ in range(count)]
