"""The store's writes: a batch lands whole or not at all, one transaction at a time, and a write
abandoned while its commit runs neither loses that commit nor blocks the next write."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from msgspec.structs import replace

from common import codec, subjects
from common.errors import StoreError
from common.ids import VmName
from common.messages import VmEvent, VmState
from scheduler.shell.store import Batch, SqliteStore
from tests.unit.scheduler.test_store_backup import NOW, record


def batch(name: str, seq: int) -> Batch:
    """One VM record and its event ``seq``."""
    vm = replace(record(), name=VmName(name), state=VmState.PENDING)
    event = VmEvent(seq=seq, time=NOW, name=name, state=VmState.PENDING, host=None, generation=1)
    return Batch(vms=[vm], events=[(seq, subjects.vm_event(name), codec.encode(event))])


async def stored(path: Path) -> tuple[set[str], list[int]]:
    """The VM names and outbox sequences a fresh open of the store finds."""
    store = await SqliteStore.open(path)
    try:
        loaded = await store.load()
    finally:
        await store.close()
    return {vm.name for vm in loaded.vms}, [seq for seq, _, _ in loaded.outbox]


async def test_a_failed_write_stores_nothing_of_its_batch_and_the_next_one_lands(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    try:
        await store.commit(batch("a", 1))
        with pytest.raises(StoreError, match="commit failed"):
            await store.commit(batch("b", 1))  # its event's sequence is taken: refused
        await store.commit(batch("c", 2))
    finally:
        await store.close()
    assert await stored(path) == ({"a", "c"}, [1, 2])


async def test_writes_started_together_land_one_transaction_after_another(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    try:
        await asyncio.gather(*(store.commit(batch(f"vm{n}", n + 1)) for n in range(20)))
    finally:
        await store.close()
    assert await stored(path) == ({f"vm{n}" for n in range(20)}, list(range(1, 21)))


async def test_a_write_cancelled_during_its_commit_still_commits_and_the_next_waits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    try:
        first = asyncio.ensure_future(store.commit(batch("a", 1)))
        await asyncio.sleep(0)  # its statements ran; its commit was handed to the commit thread
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await store.commit(batch("b", 2))
    finally:
        await store.close()
    assert await stored(path) == ({"a", "b"}, [1, 2])
