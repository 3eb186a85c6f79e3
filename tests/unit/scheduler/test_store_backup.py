"""The store keeps every VM event for usage metering, and can be backed up while the scheduler
runs (docs/operations.md: the sqlite3 backup API or VACUUM INTO)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from common import codec, subjects
from common.ids import VmName
from common.messages import HostEvent, HostState, VmEvent, VmState
from scheduler.shell.store import Batch, SqliteStore, read_vm_history
from scheduler.state.model import VmRecord

NOW = datetime(2026, 3, 1, 10, tzinfo=UTC)


def vm_event(seq: int, state: VmState) -> tuple[int, str, bytes]:
    event = VmEvent(seq=seq, time=NOW, name="a", state=state, host="h1", generation=1, size="Small")
    return seq, subjects.vm_event("a"), codec.encode(event)


def record() -> VmRecord:
    return VmRecord(
        name=VmName("a"),
        size="Small",
        cpu_milli=1000,
        mem_mib=1792,
        image="tiny",
        region=None,
        availability_set=None,
        state=VmState.RUNNING,
        created_at=NOW,
        updated_at=NOW,
    )


async def test_vm_events_are_kept_after_publication_and_a_live_backup_restores(
    tmp_path: Path,
) -> None:
    path = tmp_path / "scheduler.db"
    store = await SqliteStore.open(path)
    try:
        host = HostEvent(seq=2, time=NOW, host_id="h1", state=HostState.UP)
        events = [
            vm_event(1, VmState.SCHEDULED),
            (2, subjects.host_event("h1"), codec.encode(host)),
            vm_event(3, VmState.RUNNING),
        ]
        await store.commit(Batch(vms=[record()], events=events))
        await store.commit(Batch(published=[1, 2, 3]))  # JetStream has them: the outbox forgets
        history = [msgspec.json.decode(b, type=VmEvent) for b in await read_vm_history(path)]
        assert [(e.seq, e.state) for e in history] == [(1, "scheduled"), (3, "running")]

        # Backups while the store is open (its WAL not checkpointed): both documented ways.
        vacuumed, copied = tmp_path / "vacuum.db", tmp_path / "copy.db"
        live = sqlite3.connect(path)
        live.execute("VACUUM INTO ?", (str(vacuumed),))
        live.close()
        source = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        target = sqlite3.connect(copied)
        source.backup(target)
        source.close()
        target.close()
    finally:
        await store.close()
    for backup in (vacuumed, copied):
        restored = await SqliteStore.open(backup)
        try:
            loaded = await restored.load()
        finally:
            await restored.close()
        assert [vm.name for vm in loaded.vms] == ["a"] and loaded.event_seq == 3
        assert loaded.outbox == []
        assert len(await read_vm_history(backup)) == 2


async def test_the_outbox_forgets_exactly_the_events_published_and_a_vm_row_is_rewritten(
    tmp_path: Path,
) -> None:
    """Published events leave the outbox in runs (one statement per run of consecutive ones):
    whatever order they were published in, only those leave; a VM written again is one row
    with its newest body."""
    store = await SqliteStore.open(tmp_path / "scheduler.db")
    try:
        events = [vm_event(seq, VmState.SCHEDULED) for seq in range(1, 9)]
        await store.commit(Batch(vms=[record()], events=events))
        stopped = msgspec.structs.replace(record(), state=VmState.STOPPED)
        await store.commit(Batch(vms=[stopped], published=[5, 1, 2, 4, 4, 8]))
        loaded = await store.load()
    finally:
        await store.close()
    assert [seq for seq, _, _ in loaded.outbox] == [3, 6, 7]
    assert [(vm.name, vm.state) for vm in loaded.vms] == [("a", VmState.STOPPED)]
