"""The cyclic garbage collector and the scheduler's records: what survived two collections is
frozen, so that the full collections of a term do not walk every record again.

The records, their indexes and the read view's copies are long-lived, and most of them are
never garbage; but CPython's full collection walks every tracked object, and while a fleet fills
(each VM adds a few lists, a command spec, index entries) it runs each time the tracked objects
grew by a quarter: in ``bench.e2e`` (40,000 VMs) the collector took 11 to 23 % of the scheduler's
CPU, most of it in full collections. A term's start freezes what it loaded
(``readview.load``); this does the same, as the term goes on, for what survives a collection of
the middle generation (an object that survived two collections is moved to the oldest
generation by it, and here to the frozen set instead). The young generations are collected as
before, so short-lived garbage (cycles included) is freed as before.

A frozen object that later becomes cyclic garbage is not freed while frozen; every
``full_every_s`` everything is unfrozen and the next full collection (CPython's own, when its
thresholds say) walks it all once and frees such cycles; then freezing resumes. Objects freed by
their reference count (nearly all: records are replaced or deleted, not left in cycles) are
freed at once, frozen or not.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

FULL_EVERY_S = 600.0


class Collector:
    def __init__(
        self, full_every_s: float = FULL_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.full_every_s = full_every_s
        self._clock = clock
        self._last_full_s = clock()
        self._awaiting_full = False
        self.frozen = 0
        """How many times survivors were frozen (for tests)."""

    def start(self) -> None:
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)

    def stop(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        """After a collection of the middle or oldest generation (its survivors are in the
        oldest now): freeze them, or, once per ``full_every_s``, unfreeze everything and wait
        for a full collection before freezing again."""
        generation = info["generation"]
        if phase != "stop" or generation == 0:
            return
        now_s = self._clock()
        if self._awaiting_full:
            if generation < 2:
                return
            self._awaiting_full = False
            self._last_full_s = now_s
        elif now_s - self._last_full_s >= self.full_every_s:
            gc.unfreeze()
            self._awaiting_full = True
            return
        gc.freeze()
        self.frozen += 1


def started(full_every_s: float = FULL_EVERY_S) -> Collector:
    collector = Collector(full_every_s)
    collector.start()
    return collector
