"""The fence guard's pure parts: the lease file, the fence decision and one guard step, with
time, VMs, agent liveness and the pause injected."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from hostagent.drivers.fake import FakeDriver
from hostagent.execlog import ExecEvent, ExecLog, read_execlog
from hostagent.fenceguard import IDLE_EXIT_S, RECHECK_S, Guard
from hostagent.fencing import LeasePublisher
from hostagent.guardvms import GuardedVm, agent_alive, process_start
from hostagent.lease import Lease
from hostagent.leasefile import (
    AGENT_GRACE_S,
    LeaseRecord,
    decode_lease,
    encode_lease,
    fence_due,
    lease_path,
    read_lease,
    write_lease,
)
from tests.unit.hostagent.conftest import FakeClock, make_agent, renew

BOOT = "boot-a"


def record(expires_at_s: float | None = 110.0, *, boot_id: str = BOOT) -> LeaseRecord:
    return LeaseRecord(expires_at_s, written_at_s=100.0, pid=4242, pid_start=77, boot_id=boot_id)


# --------------------------------------------------------------------------- the lease file


@pytest.mark.parametrize("expires_at_s", [110.5, None])
def test_lease_round_trips(expires_at_s: float | None) -> None:
    assert decode_lease(encode_lease(record(expires_at_s))) == record(expires_at_s)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"expires_at_s": 1.0, "pid": 7, "pid_start": 1, "boot_id": "b"}',
        b'{"expires_at_s": NaN, "written_at_s": 1.0, "pid": 7, "pid_start": 1, "boot_id": "b"}',
        b'{"expires_at_s": "x", "written_at_s": 1.0, "pid": 7, "pid_start": 1, "boot_id": "b"}',
        b'{"expires_at_s": 1.0, "written_at_s": 1.0, "pid": 0, "pid_start": 1, "boot_id": "b"}',
        b'{"expires_at_s": 1.0, "written_at_s": 1.0, "pid": 7, "boot_id": "b"}',
    ],
)
def test_a_corrupt_lease_reads_as_none(data: bytes) -> None:
    assert decode_lease(data) is None


def test_write_lease_replaces_the_file_whole(tmp_path: Path) -> None:
    path = lease_path(tmp_path, "h1")
    path.parent.mkdir(parents=True)
    assert read_lease(path) is None, "missing"
    write_lease(path, record(110.0))
    write_lease(path, record(120.0))
    assert read_lease(path) == record(120.0)
    assert [p.name for p in path.parent.iterdir()] == ["lease.json"], "no partial file left"


def test_the_agent_publishes_every_renewal(
    tmp_path: Path, clock: FakeClock, driver: FakeDriver, execlog: ExecLog
) -> None:
    path = lease_path(tmp_path, "h1")
    publisher = LeasePublisher(path, clock, pid=4242, pid_start=77, boot_id=BOOT)
    agent = make_agent(driver, execlog, clock, leased=False)
    agent.on_lease = publisher.publish

    publisher.publish(agent.lease)
    assert read_lease(path) == LeaseRecord(None, 100.0, 4242, 77, BOOT), "no lease held yet"
    clock.now_s = 101.0
    renew(agent, clock, sent_at_s=100.5)
    assert read_lease(path) == LeaseRecord(104.5, 101.0, 4242, 77, BOOT)


# --------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(
    ("now_s", "agent_alive", "due"),
    [
        (109.9, False, False),
        (110.0, False, True),
        (110.0, True, False),
        (110.0 + AGENT_GRACE_S, True, True),
    ],
)
def test_fence_is_due_at_expiry_or_after_a_live_agents_grace(
    now_s: float, agent_alive: bool, due: bool
) -> None:
    assert fence_due(record(110.0), now_s=now_s, boot_id=BOOT, agent_alive=agent_alive) is due


def test_no_lease_or_another_boots_lease_fences_at_once() -> None:
    assert fence_due(None, now_s=0.0, boot_id=BOOT, agent_alive=True)
    assert fence_due(record(1e9, boot_id="boot-b"), now_s=0.0, boot_id=BOOT, agent_alive=True)


def test_no_lease_held_counts_from_when_the_agent_wrote_it() -> None:
    held_none = record(None)  # written at 100.0
    assert fence_due(held_none, now_s=100.0, boot_id=BOOT, agent_alive=False)
    assert not fence_due(held_none, now_s=100.0, boot_id=BOOT, agent_alive=True)
    assert fence_due(held_none, now_s=100.0 + AGENT_GRACE_S, boot_id=BOOT, agent_alive=True)


# --------------------------------------------------------------------------- one guard step


class World:
    """What the guard sees: VMs, the agent's liveness, and which VMs it paused."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path
        self.vms = [GuardedVm("vm-a", 3, 501, tmp_path), GuardedVm("vm-b", 1, 502, tmp_path)]
        self.running = {"vm-a", "vm-b"}
        self.agent_alive = False
        self.pauses: list[str] = []
        self.guard = Guard(
            tmp_path,
            "h1",
            boot_id=BOOT,
            pause=self.pause,
            find_vms=lambda root: list(self.vms),
            agent_alive=lambda lease: self.agent_alive,
        )
        (tmp_path / "h1").mkdir(parents=True)

    def pause(self, vm: GuardedVm) -> bool:
        self.pauses.append(vm.name)
        if vm.name not in self.running:
            return False
        self.running.discard(vm.name)
        return True

    def lease(self, expires_at_s: float | None) -> None:
        write_lease(lease_path(self.data_dir, "h1"), record(expires_at_s))

    def audit(self) -> list[tuple[str, int, ExecEvent]]:
        rows = read_execlog(self.data_dir / "h1" / "executions.jsonl")
        assert all(row.host == "h1" and math.isfinite(row.t) for row in rows)
        return [(row.vm, row.gen, row.event) for row in rows]


def test_an_expired_lease_pauses_every_vm_once_and_logs_each_with_its_generation(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.lease(110.0)
    assert world.guard.step(109.0)
    assert world.pauses == [], "lease valid"

    world.running.discard("vm-b")  # the agent had paused this one itself
    assert world.guard.step(110.0)
    assert sorted(world.pauses) == ["vm-a", "vm-b"]
    assert world.audit() == [("vm-a", 3, ExecEvent.PAUSE)], "only what the guard paused"

    world.guard.step(110.0 + RECHECK_S / 2)
    assert len(world.pauses) == 2, "not asked again at once"
    world.guard.step(110.0 + RECHECK_S)
    assert len(world.pauses) == 4, "checked again later"
    assert len(world.audit()) == 1, "an already paused VM is not logged again"


def test_a_missing_or_corrupt_lease_fences_while_vms_exist(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.guard.step(0.0)
    assert sorted(world.pauses) == ["vm-a", "vm-b"], "no lease file"

    world = World(tmp_path / "again")
    lease_path(world.data_dir, "h1").write_bytes(b"{garbage")
    world.guard.step(0.0)
    assert sorted(world.pauses) == ["vm-a", "vm-b"], "corrupt lease file"


def test_a_live_agent_gets_its_grace_and_a_renewal_resets_the_guard(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.agent_alive = True
    world.lease(110.0)
    world.guard.step(110.0)
    assert world.pauses == [], "the live agent fences first"
    world.guard.step(110.0 + AGENT_GRACE_S)
    assert sorted(world.pauses) == ["vm-a", "vm-b"], "a stuck agent is covered"

    world.lease(120.0)  # renewed: the agent resumed them
    world.running = {"vm-a", "vm-b"}
    world.guard.step(111.0)
    world.agent_alive = False
    world.guard.step(120.0)
    assert sorted(world.pauses) == ["vm-a", "vm-a", "vm-b", "vm-b"], "fenced again at expiry"


def test_the_guard_exits_once_no_agent_and_no_vm_remain(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.vms = []
    world.agent_alive = True
    world.lease(110.0)
    assert world.guard.step(0.0)
    world.agent_alive = False
    assert world.guard.step(200.0)
    assert world.guard.step(200.0 + IDLE_EXIT_S / 2)
    assert not world.guard.step(200.0 + IDLE_EXIT_S)
    assert world.pauses == []


def test_an_agent_is_known_by_its_pid_and_start_time() -> None:
    me = os.getpid()
    start = process_start(me)
    assert start is not None
    assert agent_alive(LeaseRecord(None, 0.0, me, start, BOOT))
    assert not agent_alive(LeaseRecord(None, 0.0, me, start + 1, BOOT)), "a reused pid"


def test_no_lease_held_counts_as_expired_for_the_publisher(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    LeasePublisher(path, FakeClock(5.0), pid=1, pid_start=2, boot_id=BOOT).publish(Lease())
    assert read_lease(path) == LeaseRecord(None, 5.0, 1, 2, BOOT)
