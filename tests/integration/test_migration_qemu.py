"""Live migration between two QEMU drivers, each a "host" in a network namespace of its own,
joined by a veth underlay: the source mirrors the disks into the destination's NBD exports and
sends the memory over the underlay (hostagent/drivers/qemuflows.py). No scheduler, no agent.

The guest is the tiny image with a counter typed into its console's shell: every round it
writes the next number to a file on its OS disk and to the first block of its data disk, syncs
both, then prints ``COUNT=<n>`` on the serial console. A tick is only printed by a guest whose
vCPU runs and after the number is on its disks, so the ticks seen on each host's console say
which copy executed when, and the number found on the destination's disks after the handover
must be at least the source's last tick. Skipped without QEMU, root or the network tools;
required in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.errors import DriverError
from common.messages import DiskKind, DiskSpec, ObservedState, VmSpec
from common.resources import Resources
from hostagent.drivers.base import IncomingEndpoint, MigrationProgress
from hostagent.drivers.qemu import QemuDriver
from hostagent.drivers.qemuproc import QemuSettings, pid_alive, read_pid
from hostagent.drivers.qmp import QmpClient
from hostagent.images import ImageCache
from tests import qemukit
from tests.netkit import Host, Netbed, clean_leftovers, require_netns
from tests.qemukit import boot_kit
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(120)]

BOOT_S = 90.0
MEM_MIB = 96
VM = "mig-1"
COUNTER = (
    "n=0; while :; do n=$((n+1)); echo $n >/var/lib/stratus/count;"
    " echo $n | dd of=/dev/vdb bs=512 conv=fsync 2>/dev/null; sync;"
    " echo COUNT=$n; sleep 0.01; done & true"
)
TICK = re.compile(rb"COUNT=(\d+)\r?\n")
SAMPLE_S = 0.005


def spec() -> VmSpec:
    disks = [
        DiskSpec(disk_id=f"{VM}-os", kind=DiskKind.OS, image="tiny"),
        DiskSpec(disk_id=f"{VM}-data", kind=DiskKind.DATA, size_mib=64),
    ]
    return VmSpec(name=VM, size="Tiny", cpu_milli=1000, mem_mib=MEM_MIB, image="tiny", disks=disks)


@dataclass
class Node:
    host: Host
    driver: QemuDriver


@dataclass
class Ticks:
    """Every ``COUNT=n`` each host's console showed, with the wall-clock time it was seen."""

    seen: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)

    def sample(self, label: str, driver: QemuDriver) -> None:
        if VM not in {vm.name for vm in driver.inventory()}:
            return
        chunk = driver.console_read(VM, self.offsets.get(label, 0), 1 << 20)
        data = chunk.data[: chunk.data.rfind(b"\n") + 1]
        self.offsets[label] = chunk.offset + len(data)
        now = time.monotonic()
        self.seen.setdefault(label, []).extend((now, int(n)) for n in TICK.findall(data))

    def last(self, label: str) -> tuple[float, int] | None:
        found = self.seen.get(label)
        return found[-1] if found else None

    def first_after(self, label: str, moment: float) -> tuple[float, int] | None:
        return next((tick for tick in self.seen.get(label, []) if tick[0] > moment), None)


@pytest.fixture(scope="module")
def kit() -> Path:
    return boot_kit()


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Netbed]:
    require_netns()
    clean_leftovers()
    testbed = Netbed(tmp_path)
    try:
        yield testbed
    finally:
        testbed.close([])


def make_driver(kit: Path, root: Path, netns: str) -> QemuDriver:
    settings = QemuSettings(
        qemu_binary="qemu-system-x86_64", accel="tcg", kernel=kit / "vmlinux",
        initramfs=kit / "initramfs.gz", boot_timeout_s=BOOT_S, netns=netns,
    )  # fmt: skip
    return QemuDriver(
        settings, root, ImageCache(root / "images", kit), capacity=Resources(4000, 1024)
    )


@pytest.fixture
async def nodes(bed: Netbed, kit: Path, tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    h1, h2 = bed.host("h1"), bed.host("h2")
    bed.join(h1, h2)
    made = [Node(h, make_driver(kit, tmp_path / h.netns, h.netns)) for h in (h1, h2)]
    try:
        yield made[0], made[1]
    finally:
        for node in made:  # guests first: a namespace lives on while QEMU holds it
            for vm in node.driver.inventory():
                await node.driver.destroy(vm.name)
            await node.driver.close()


@contextlib.asynccontextmanager
async def watching(source: Node, destination: Node) -> AsyncIterator[Ticks]:
    """Sample both consoles every few milliseconds (the pace of the measurement, not a
    synchronisation) while the body runs."""
    ticks = Ticks()

    async def sample() -> None:
        while True:
            ticks.sample("source", source.driver)
            ticks.sample("destination", destination.driver)
            await asyncio.sleep(SAMPLE_S)

    task = asyncio.create_task(sample())
    try:
        yield ticks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def in_guest(driver: QemuDriver, command: str, timeout_s: float = 60.0) -> str:
    return await qemukit.in_guest(driver, VM, command, timeout_s)


async def boot_counting(node: Node, ticks: Ticks) -> None:
    await node.driver.start(spec(), 1)
    await in_guest(node.driver, COUNTER)
    await wait_until(lambda: ticks.last("source") is not None, timeout_s=30, message="ticking")


async def ticking(ticks: Ticks, label: str, after: float, count: int = 5) -> None:
    """At least ``count`` ticks on ``label`` seen after ``after``."""

    def enough() -> bool:
        return sum(1 for t, _ in ticks.seen.get(label, []) if t > after) >= count

    await wait_until(enough, timeout_s=30, message=f"{label} ticking")


def state(driver: QemuDriver) -> ObservedState | None:
    return next((vm.state for vm in driver.inventory() if vm.name == VM), None)


def md5(output: str, label: str) -> str:
    found = re.search(rf"^{label} ([0-9a-f]{{32}})", output, re.MULTILINE)
    assert found, output
    return found.group(1)


BLOBS = (
    "dd if=/dev/urandom of=/var/lib/stratus/blob bs=1M count=4 2>/dev/null;"
    " dd if=/dev/urandom of=/dev/vdb bs=1M count=8 seek=1 conv=fsync 2>/dev/null; sync;"
    " echo os $(md5sum </var/lib/stratus/blob); "
    " echo data $(dd if=/dev/vdb bs=1M count=8 skip=1 2>/dev/null | md5sum)"
)
READ_BACK = (
    "sync; echo 3 >/proc/sys/vm/drop_caches;"
    " echo os $(md5sum </var/lib/stratus/blob);"
    " echo data $(dd if=/dev/vdb bs=1M count=8 skip=1 2>/dev/null | md5sum);"
    " echo file $(cat /var/lib/stratus/count);"
    " echo block $(dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -n 1)"
)


async def send_watched(source: Node, endpoint: IncomingEndpoint) -> list[MigrationProgress]:
    """``migrate_out`` at full speed; the progress it reported meanwhile."""
    progress = []

    async def observe() -> bool:
        if (now := source.driver.migration_progress(VM)) is not None:
            progress.append(now)
        return False

    watcher = asyncio.create_task(wait_until(observe, timeout_s=60, interval_s=0.05))
    try:
        await source.driver.migrate_out(VM, endpoint, max_downtime_ms=100, max_bandwidth_mib_s=0)
    finally:
        watcher.cancel()
    return progress


def downtime(ticks: Ticks, began: float, handed: float, finished: float) -> tuple[float, int]:
    """Check that the count went on without a reset, print the downtime; the source's last
    tick."""
    last_source, first_destination = ticks.last("source"), ticks.first_after("destination", 0)
    assert last_source is not None and first_destination is not None
    assert last_source[0] < first_destination[0], "one copy executes at a time"
    assert last_source[1] < first_destination[1] <= last_source[1] + 3, "no reset"
    downtime_ms = (first_destination[0] - last_source[0]) * 1000
    print(
        f"migration of a {MEM_MIB} MiB guest: total {(handed - began) * 1000:.0f} ms "
        f"(prepare + copy), finish {(finished - handed) * 1000:.0f} ms, downtime (last tick "
        f"on source -> first on destination) {downtime_ms:.0f} ms"
    )
    assert downtime_ms < 3000
    return last_source


async def restart_both(nodes: tuple[Node, Node], kit: Path) -> None:
    """Both agents restart: each adopts its VM again."""
    for node in nodes:
        await node.driver.close()
        node.driver = make_driver(kit, node.driver.root, node.host.netns)
        assert await node.driver.adopt() == [VM]


async def test_a_counting_guest_moves_live_with_its_disks(nodes: tuple[Node, Node]) -> None:
    source, destination = nodes
    async with watching(source, destination) as ticks:
        await boot_counting(source, ticks)
        before = await in_guest(source.driver, BLOBS)
        source_pid = read_pid(source.driver.files(VM))
        assert source_pid is not None

        began = time.monotonic()
        endpoint = await destination.driver.prepare_incoming(
            spec(), 2, destination.host.underlay_ip
        )
        assert state(destination.driver) is ObservedState.INCOMING
        assert endpoint == await destination.driver.prepare_incoming(
            spec(), 2, destination.host.underlay_ip
        ), "repeating it returns the same endpoint"
        await destination.driver.pause(VM)  # fencing an incoming VM does nothing
        await destination.driver.resume(VM)  # nor does resuming it: only finish_incoming
        progress = await send_watched(source, endpoint)
        handed = time.monotonic()
        assert state(source.driver) is ObservedState.HANDED_OVER
        await source.driver.pause(VM)  # a no-op too
        assert state(source.driver) is ObservedState.HANDED_OVER
        assert source.driver.migration_progress(VM) is None
        # Progress was reported while the memory moved (at full speed the whole copy may take
        # less than two of the watcher's polls: how far its last poll got says nothing).
        moving = [p for p in progress if p.total_mib >= MEM_MIB and p.transferred_mib > 0]
        assert moving, progress
        assert await qemu_status(destination) == "paused", "it waits for finish_incoming"
        # A guest that converges is stopped for a last round planned well under the allowance
        # (100 ms), which QEMU is only given after several passes: the pause is the guest's
        # whole downtime budget, the switchover's trip has to fit in it too.
        assert await downtime_limit_ms(source) < 100

        reported = await states_during(destination.driver, destination.driver.finish_incoming(VM))
        finished = time.monotonic()
        # Never reported paused on the way (a heartbeat then made the scheduler end the
        # switchover as failed): incoming until its cont is answered, then running.
        assert reported == [ObservedState.INCOMING, ObservedState.RUNNING]
        await ticking(ticks, "destination", finished)
        last_source = downtime(ticks, began, handed, finished)

        after = await in_guest(destination.driver, READ_BACK)
        assert md5(after, "os") == md5(before, "os") and md5(after, "data") == md5(before, "data")
        for kind in ("file", "block"):
            found = re.search(rf"^{kind} (\d+)$", after, re.MULTILINE)
            assert found and int(found[1]) >= last_source[1], f"{kind}: {after}"

    await source.driver.destroy(VM)
    assert not pid_alive(source_pid, source.driver.root), "the source's qemu is gone"
    assert not list((source.driver.root / "disks").glob("*.qcow2")), "the stale disks too"
    assert not source.driver.files(VM).dir.exists()


async def test_bad_or_early_commands_are_refused_and_change_nothing(
    nodes: tuple[Node, Node],
) -> None:
    source, destination = nodes
    with pytest.raises(DriverError) as refused:
        await destination.driver.prepare_incoming(spec(), 2, "host-2.example")
    assert not refused.value.retryable and "listen address" in str(refused.value)
    assert destination.driver.inventory() == []
    assert not (destination.driver.root / "disks").exists()
    assert not (destination.driver.root / "vms").exists()
    for attempt in (
        destination.driver.finish_incoming(VM),
        source.driver.migrate_out(
            VM, IncomingEndpoint("10.0.0.1", 1, 1), max_downtime_ms=100, max_bandwidth_mib_s=0
        ),
    ):
        with pytest.raises(DriverError) as unknown:
            await attempt
        assert not unknown.value.retryable
    await source.driver.cancel_migration(VM)  # nothing to cancel: nothing happens

    address = destination.host.underlay_ip
    endpoint = await destination.driver.prepare_incoming(spec(), 2, address)
    with pytest.raises(DriverError) as other:
        await destination.driver.prepare_incoming(spec(), 3, address)
    assert other.value.retryable, "another attempt waits until this one is destroyed"
    with pytest.raises(DriverError) as early:
        await destination.driver.finish_incoming(VM)
    assert early.value.retryable and "not fully arrived" in str(early.value)
    await destination.driver.resume(VM)  # it runs on finish_incoming only
    assert state(destination.driver) is ObservedState.INCOMING
    assert await qemu_status(destination) == "inmigrate"
    assert await destination.driver.prepare_incoming(spec(), 2, address) == endpoint
    await destination.driver.stop(VM)  # an incoming VM's disks are not kept
    assert destination.driver.inventory() == []
    assert not list((destination.driver.root / "disks").glob("*.qcow2"))


async def states_during(driver: QemuDriver, step: Awaitable[None]) -> list[ObservedState | None]:
    """The VM's reported state, looked at on every turn of the event loop while ``step`` runs
    (a heartbeat may read it at any of them), each change once; then its state after."""
    loop = asyncio.get_running_loop()
    seen: list[ObservedState | None] = []

    def look() -> None:
        if not seen or seen[-1] is not state(driver):
            seen.append(state(driver))
        turn[:] = [loop.call_soon(look)]

    turn: list[asyncio.Handle] = []
    look()
    try:
        await step
    finally:
        turn[0].cancel()
    look()
    turn[0].cancel()
    return seen


async def qemu_status(node: Node) -> str:
    """What QEMU itself says of the VM's run state (asked on the fence guard's monitor)."""
    guard = await QmpClient.connect(node.driver.files(VM).guard)
    try:
        return await guard.query_status()
    finally:
        await guard.close()


async def downtime_limit_ms(node: Node) -> int:
    """The pause QEMU was last allowed to plan for the migration's last round."""
    guard = await QmpClient.connect(node.driver.files(VM).guard)
    try:
        parameters = await guard.execute("query-migrate-parameters")
    finally:
        await guard.close()
    assert isinstance(parameters, dict)
    return int(parameters["downtime-limit"])


async def slow_migration(
    source: Node, destination: Node, *, generation: int = 2, cap_mib_s: int = 2
) -> asyncio.Task[None]:
    """A migration capped at ``cap_mib_s`` (2 MiB/s: it takes a minute), once it has copied a
    few MiB."""
    endpoint = await destination.driver.prepare_incoming(
        spec(), generation, destination.host.underlay_ip
    )
    sending = asyncio.create_task(
        source.driver.migrate_out(VM, endpoint, max_downtime_ms=100, max_bandwidth_mib_s=cap_mib_s)
    )

    def copying() -> bool:
        progress = source.driver.migration_progress(VM)
        return progress is not None and progress.transferred_mib >= 4

    await wait_until(copying, timeout_s=60, message="copying")
    return sending


async def runs_on_at_source(source: Node, ticks: Ticks, sending: asyncio.Task[None]) -> None:
    with pytest.raises(DriverError) as failed:
        await sending
    assert failed.value.retryable
    assert state(source.driver) is ObservedState.RUNNING
    assert source.driver.migration_progress(VM) is None
    await ticking(ticks, "source", time.monotonic())
    last = ticks.last("source")
    assert last is not None
    assert not ticks.seen.get("destination"), "the destination never executed"


async def leaves_nothing(destination: Node) -> None:
    await destination.driver.destroy(VM)
    assert destination.driver.inventory() == []
    assert not list((destination.driver.root / "disks").glob("*.qcow2"))
    assert not destination.driver.files(VM).dir.exists()


async def test_a_cancelled_migration_leaves_the_guest_counting_at_the_source(
    nodes: tuple[Node, Node],
) -> None:
    source, destination = nodes
    async with watching(source, destination) as ticks:
        await boot_counting(source, ticks)
        sending = await slow_migration(source, destination)
        destination_pid = read_pid(destination.driver.files(VM))
        await source.driver.cancel_migration(VM)
        await runs_on_at_source(source, ticks, sending)
        await source.driver.cancel_migration(VM)  # nothing runs: nothing happens
    await leaves_nothing(destination)
    assert destination_pid is not None and not pid_alive(destination_pid, destination.driver.root)


async def test_a_migration_whose_destination_dies_leaves_the_guest_counting_at_the_source(
    nodes: tuple[Node, Node],
) -> None:
    source, destination = nodes
    async with watching(source, destination) as ticks:
        await boot_counting(source, ticks)
        sending = await slow_migration(source, destination)
        destination_pid = read_pid(destination.driver.files(VM))
        assert destination_pid is not None
        os.kill(destination_pid, signal.SIGKILL)
        await runs_on_at_source(source, ticks, sending)
    await wait_until(lambda: state(destination.driver) is None, message="destination gone")
    await leaves_nothing(destination)


async def test_a_vm_fenced_during_its_migration_never_runs_again_on_its_own(
    nodes: tuple[Node, Node], kit: Path
) -> None:
    source, destination = nodes
    async with watching(source, destination) as ticks:
        await boot_counting(source, ticks)
        sending = await slow_migration(source, destination)
        await source.driver.pause(VM)  # the fence watchdog, mid-copy
        paused = time.monotonic()
        await source.driver.cancel_migration(VM)
        with pytest.raises(DriverError):
            await sending
        assert state(source.driver) is ObservedState.PAUSED
        assert await qemu_status(source) == "paused", "QEMU did not let it run again"
        resumed = time.monotonic()
        ran = [t for t, _ in ticks.seen["source"] if paused + 0.2 < t < resumed]
        assert not ran, "a fenced VM does not run again when its migration ends"
        await source.driver.resume(VM)  # on the scheduler's word only
        await ticking(ticks, "source", resumed)
        await leaves_nothing(destination)

        # Fenced during an attempt that then completes: handed over, and it never runs again.
        sending = await slow_migration(source, destination, generation=3, cap_mib_s=16)
        await source.driver.pause(VM)
        await sending
        assert state(source.driver) is ObservedState.HANDED_OVER
        await source.driver.resume(VM)
        # QEMU says completed (the hand-over) a moment before it leaves finish-migrate.
        stopped = await qemu_status(source)
        assert stopped in ("finish-migrate", "postmigrate"), "the stale copy stays stopped"
        await restart_both(nodes, kit)  # each side is adopted as it stands
        assert state(source.driver) is ObservedState.HANDED_OVER
        assert state(destination.driver) is ObservedState.INCOMING
        await source.driver.resume(VM)
        assert await qemu_status(source) == "postmigrate"
        await destination.driver.finish_incoming(VM)
        await ticking(ticks, "destination", time.monotonic())


async def test_a_migration_under_way_when_the_agent_restarts_is_cancelled_and_the_vm_held_paused(
    nodes: tuple[Node, Node], kit: Path
) -> None:
    source, destination = nodes
    async with watching(source, destination) as ticks:
        await boot_counting(source, ticks)
        sending = await slow_migration(source, destination)
        await source.driver.close()  # the source's agent stops; QEMU's migration goes on
        source.driver = make_driver(kit, source.driver.root, source.host.netns)
        assert await source.driver.adopt() == [VM]
        with pytest.raises(DriverError):
            await sending  # the old agent's call, cut off from QEMU
        assert state(source.driver) is ObservedState.PAUSED, "the scheduler decides"
        assert await qemu_status(source) == "paused"
        resumed = time.monotonic()
        await source.driver.resume(VM)
        await ticking(ticks, "source", resumed)
    await leaves_nothing(destination)
