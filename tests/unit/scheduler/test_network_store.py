"""Networks survive the store: records, counters and the indexes built from them on load; the
state log carries them to a standby; an older scheduler refuses a store that has them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from common.errors import StoreError
from common.ids import VmName
from common.network_messages import AddEndpoint, NicRequest
from scheduler.core.contract import Op
from scheduler.shell.readview import ReadView, snapshot
from scheduler.shell.statelog import split
from scheduler.shell.store import SCHEMA_VERSION, Batch, Rows, SqliteStore, encode_batch
from scheduler.state.cluster import ClusterState
from scheduler.state.storage import ImageRecord
from tests.unit.scheduler.corekit import EPOCH, CoreKit


def kit_with_networks() -> tuple[CoreKit, list[Batch]]:
    """A cluster with two networks (one deleted) and VMs with NICs and an endpoint; the
    batches its steps stored."""
    kit = CoreKit()
    batches: list[Batch] = []

    def keep() -> None:
        result = kit.result
        batches.append(
            Batch(
                vms=list(result.vms),
                hosts=list(result.hosts),
                vnets=list(result.vnets),
                counters=result.counters,
            )
        )

    kit.heartbeat("h1", underlay_ip="192.0.2.1")
    keep()
    for name, cidr in (("front", "10.1.0.0/24"), ("old", "10.9.0.0/24")):
        kit.vnet(name, cidr)
        keep()
    kit.delete_vnet("old")
    keep()
    for name in ("a", "b"):
        kit.create(name, nics=[NicRequest(vnet="front")])
        keep()
    kit.mutate(Op.ENDPOINT_ADD, AddEndpoint(vm="a", vm_port=22))
    keep()
    return kit, batches


async def test_networks_and_nics_come_back_from_the_store_as_they_were(tmp_path: Path) -> None:
    kit, batches = kit_with_networks()
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        for batch in batches:
            await store.commit(batch)
        loaded = await store.load()
    finally:
        await store.close()
    state = ClusterState.from_records(
        loaded.vms, loaded.hosts, loaded.replies, loaded.images, loaded.vnets, loaded.counters
    )
    state.check_invariants()
    assert state.vnets == kit.state.vnets
    assert state.counters == kit.state.counters
    assert state.vms[VmName("a")].nics == kit.vm("a").nics
    assert state.vms[VmName("a")].endpoints == kit.vm("a").endpoints
    ipam = state.net.ipams["front"]
    assert ipam.used == 2 and ipam.next_free() is not None
    assert "old" not in state.net.ipams


def test_the_state_log_carries_networks_to_a_standby() -> None:
    _, batches = kit_with_networks()
    rows = [encode_batch(batch) for batch in batches]
    decoded = [msgspec.msgpack.decode(b"".join(split(r)), type=Rows) for r in rows]
    assert decoded == rows
    assert any(r.vnets for r in decoded) and any(r.counters for r in decoded)


def test_the_read_view_sees_networks_and_their_addresses() -> None:
    kit = CoreKit()
    kit.heartbeat("h1")
    view = ReadView(kit.state)
    kit.vnet("front", "10.1.0.0/24")
    view.apply(snapshot(kit.result))
    kit.create("a", nics=[NicRequest(vnet="front")])
    view.apply(snapshot(kit.result))
    assert view.state.vnets["front"].vni == 4096
    assert view.state.net.ipams["front"].used == 1
    assert view.state.vms[VmName("a")].nics[0].ip == "10.1.0.2"


async def test_a_store_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore.open(path)


async def test_a_version_2_store_opens_as_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    store = await SqliteStore.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        [(version,)] = db.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    assert version == str(SCHEMA_VERSION)


async def test_a_version_3_store_gets_each_vms_generation_as_its_high_water_mark(
    tmp_path: Path,
) -> None:
    """Schema 4 keeps a generation high-water mark per VM (live migration never reuses an
    attempt's number); a version 3 store's VMs start with theirs at their generation."""
    _, batches = kit_with_networks()
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    try:
        for batch in batches:
            await store.commit(batch)
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        body = db.execute("SELECT body FROM vms WHERE name = 'a'").fetchone()[0]
        old = msgspec.json.decode(body)
        old.pop("max_generation", None)
        old["generation"] = 7
        db.execute("UPDATE vms SET body = ? WHERE name = 'a'", (msgspec.json.encode(old),))
    store = await SqliteStore.open(path)
    try:
        loaded = await store.load()
    finally:
        await store.close()
    [a] = [vm for vm in loaded.vms if vm.name == "a"]
    assert (a.generation, a.max_generation, a.next_generation()) == (7, 7, 8)


async def test_a_version_4_store_gets_each_os_disk_its_images_size(tmp_path: Path) -> None:
    """Schema 5 says what an OS disk takes on its host (a replica is counted at full size);
    a version 4 store's OS disks get their gallery image's size, and other rows load as they
    were (host-local disks, no copies)."""
    kit, batches = kit_with_networks()
    image = ImageRecord(
        name="big", size_bytes=3 * 1024 * 1024 * 1024 + 1, sha256="ab" * 32, created_at=EPOCH
    )
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    try:
        for batch in batches:
            await store.commit(batch)
        await store.commit(Batch(images=[image]))
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        body = db.execute("SELECT body FROM vms WHERE name = 'a'").fetchone()[0]
        old = msgspec.json.decode(body)
        old["image"] = old["disks"][0]["image"] = "big"
        for disk in old["disks"]:
            disk.pop("image_mib", None)
            disk.pop("copies", None)
        db.execute("UPDATE vms SET body = ? WHERE name = 'a'", (msgspec.json.encode(old),))
    store = await SqliteStore.open(path)
    try:
        loaded = await store.load()
    finally:
        await store.close()
    vms = {vm.name: vm for vm in loaded.vms}
    assert vms[VmName("a")].disks[0].image_mib == 3 * 1024 + 1
    assert vms[VmName("a")].disks[0].charged_mib == 3 * 1024 + 1
    assert vms[VmName("b")].disks[0].charged_mib == 1024  # built-in image: size unknown
    assert all(not d.copies and not d.replicated for vm in vms.values() for d in vm.disks)
    assert kit.state.vms[VmName("a")].disks[0].image_mib == 0


async def test_a_store_with_a_record_it_cannot_decode_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO vms (name, state, body) VALUES ('a', 'running', '{\"name\": 1}')")
    store = await SqliteStore.open(path)
    try:
        with pytest.raises(StoreError, match="cannot load store"):
            await store.load()
        assert (await store.meta("schema_version")) == str(SCHEMA_VERSION)  # still usable
    finally:
        await store.close()
