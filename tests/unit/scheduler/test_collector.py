"""The scheduler's garbage-collector policy: long-lived objects are frozen (full collections do
not walk them again), and garbage is still freed (young cycles at once, a cycle of frozen
objects at the next full collection after the period)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from scheduler.shell.collector import Collector


class Node:
    def __init__(self) -> None:
        self.me: Node | None = None


@pytest.fixture
def clock() -> Iterator[list[float]]:
    gc.collect()
    yield [0.0]
    gc.unfreeze()


def test_what_survives_a_middle_collection_is_frozen_and_young_cycles_are_freed(
    clock: list[float],
) -> None:
    collector = Collector(full_every_s=600, clock=lambda: clock[0])
    collector.start()
    try:
        kept = [[i] for i in range(1000)]
        gc.collect(1)
        assert collector.frozen == 1 and gc.get_freeze_count() >= len(kept)
        young = Node()
        young.me = young
        gone = weakref.ref(young)
        del young
        gc.collect(1)
        assert gone() is None
    finally:
        collector.stop()


def test_a_frozen_cycle_that_became_garbage_is_freed_after_the_period(
    clock: list[float],
) -> None:
    collector = Collector(full_every_s=600, clock=lambda: clock[0])
    collector.start()
    try:
        node = Node()
        node.me = node
        gone = weakref.ref(node)
        gc.collect(1)  # it survives: frozen
        del node
        gc.collect(1)
        assert gone() is not None  # frozen: not walked
        clock[0] = 601.0
        gc.collect(1)  # the period is over: everything is unfrozen
        assert gc.get_freeze_count() == 0
        gc.collect(1)  # freezing waits for a full collection
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert gone() is None
        kept = [[i] for i in range(100)]
        gc.collect(1)
        assert gc.get_freeze_count() >= len(kept)  # and then resumes
    finally:
        collector.stop()


def test_a_stopped_collector_freezes_nothing(clock: list[float]) -> None:
    collector = Collector(clock=lambda: clock[0])
    collector.start()
    collector.stop()
    kept = [[i] for i in range(100)]
    gc.collect(1)
    assert gc.get_freeze_count() == 0 and kept
