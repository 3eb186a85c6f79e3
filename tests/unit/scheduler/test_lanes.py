"""The core loop's two lanes: a burst of requests never holds back what hosts say."""

from __future__ import annotations

import asyncio

from hypothesis import given, strategies as st

from common.messages import CreateVm, Heartbeat
from common.resources import Resources
from scheduler.core.contract import HeartbeatReceived, Input, Mutation, Op, Tick
from scheduler.shell.lanes import REQUESTS_FIRST_SHARE, Lanes


def heartbeat(token: int) -> HeartbeatReceived:
    beat = Heartbeat(host_id=f"h{token}", seq=1, boot_id="b", capacity=Resources(1000, 1024))
    return HeartbeatReceived(beat, token)


def create(token: int) -> Mutation:
    return Mutation(Op.CREATE, CreateVm(name=f"vm-{token}", size="Small"), token)


def test_a_heartbeat_behind_thousands_of_jobs_goes_in_the_next_step() -> None:
    lanes = Lanes()
    for token in range(10_000):
        lanes.put_nowait(create(token))
    lanes.put_nowait(heartbeat(10_000))
    lanes.put_nowait(Tick())
    step = lanes.take_nowait(2048)
    assert step[:2] == [heartbeat(10_000), Tick()]
    assert step[2:] == [create(token) for token in range(2046)]  # requests keep their order


def test_a_fleet_larger_than_a_batch_leaves_waiting_requests_a_quarter_of_it() -> None:
    lanes = Lanes()
    for token in range(5_000):
        lanes.put_nowait(heartbeat(token))
    for token in range(3):
        lanes.put_nowait(create(token))
    step = lanes.take_nowait(100)
    assert step[-3:] == [create(0), create(1), create(2)]
    assert step[:-3] == [heartbeat(token) for token in range(97)]
    for token in range(3, 1_000):
        lanes.put_nowait(create(token))
    step = lanes.take_nowait(100)
    assert sum(isinstance(item, Mutation) for item in step) == 100 // REQUESTS_FIRST_SHARE


@given(st.lists(st.sampled_from(["hb", "req"]), max_size=60), st.integers(1, 16))
def test_every_input_is_taken_once_each_lane_in_order(kinds: list[str], most: int) -> None:
    lanes = Lanes()
    items: list[Input] = [
        heartbeat(token) if kind == "hb" else create(token) for token, kind in enumerate(kinds)
    ]
    for item in items:
        lanes.put_nowait(item)
    taken: list[Input] = []
    while not lanes.empty():
        step = lanes.take_nowait(most)
        assert 0 < len(step) <= most
        taken += step
    assert sorted(taken, key=_token) == items
    for kind in (HeartbeatReceived, Mutation):
        lane = [item for item in taken if isinstance(item, kind)]
        assert lane == sorted(lane, key=_token)


def _token(item: Input) -> int:
    assert isinstance(item, HeartbeatReceived | Mutation)
    return item.token


async def test_the_jobs_consumer_waits_for_room_and_goes_on_once_a_step_took_some() -> None:
    lanes = Lanes()
    for token in range(10):
        lanes.put_nowait(create(token))
    room = asyncio.create_task(lanes.room_for_requests(10))
    await asyncio.sleep(0)
    assert not room.done(), "ten requests wait: no room for more"
    assert len(lanes.take_nowait(4)) == 4
    async with asyncio.timeout(5):
        await room


async def test_take_waits_for_the_first_input() -> None:
    lanes = Lanes()
    taking = asyncio.create_task(lanes.take(8))
    await asyncio.sleep(0)
    assert not taking.done()
    lanes.put_nowait(Tick())
    async with asyncio.timeout(5):
        assert await taking == [Tick()]
