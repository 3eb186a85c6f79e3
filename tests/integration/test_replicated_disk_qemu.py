"""A replicated data disk of a real guest, its copies on replica servers of three "hosts", each
in a network namespace of its own (no scheduler, no agent: the QEMU driver and the replica
servers are driven directly, the test plays the scheduler).

The VM runs on h1 with its disk on h1 and h2. The guest writes a marker and syncs; h2's replica
server is killed (kill -9): the guest's next write stops the VM, which is still reported
running, with h2's copy failed; ``SetDiskReplicas([h1])`` lets it go on, and the write is on
h1's copy. A copy on h3 joins by a write-blocking mirror: it gets everything written before and
after. Every number a guest counter printed as synced is on every copy kept.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.messages import DiskKind, DiskSpec, ObservedState, VmSpec
from common.replica_messages import ConfigureReplicas, ReplicaRef, ReplicaSpec, SetDiskReplicas
from common.resources import Resources
from common.spec_messages import DiskStorage
from hostagent.drivers.qemu import QemuDriver
from hostagent.drivers.qemuproc import QemuSettings
from hostagent.hostcmd import HostCommands
from hostagent.images import ImageCache
from hostagent.replicaserver import ReplicaServer
from tests import qemukit
from tests.netkit import Host, Netbed, clean_leftovers, require_netns
from tests.qemukit import boot_kit
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(180)]

VM = "rep-1"
DISK = "rep-1-data-1"


@dataclass
class Replicas:
    """One host's replica server and where others reach it."""

    host_id: str
    netns: str
    server: ReplicaServer

    def ref(self) -> ReplicaRef:
        return ReplicaRef(host=self.host_id, address=self.server.address, port=self.server.port)

    async def hold(self, *disk_ids: str) -> None:
        specs = [ReplicaSpec(disk_id=d, vm=VM, kind="data", size_mib=64) for d in disk_ids]
        await self.server.apply(ConfigureReplicas(replicas=specs, digest=",".join(disk_ids)))
        await wait_until(lambda: not self.server.statuses(), timeout_s=15, message="made")

    def read(self, netns: str, offset: int, length: int) -> bytes:
        """The copy's bytes, read over NBD from ``netns``."""
        url = f"nbd://{self.server.address}:{self.server.port}/{DISK}"
        done = subprocess.run(
            ["ip", "netns", "exec", netns, "qemu-io", "-f", "raw", "-c",
             f"read -v {offset} {length}", url],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return _hexdump_bytes(done.stdout)


def _hexdump_bytes(text: str) -> bytes:
    data = bytearray()
    for line in text.splitlines():
        found = re.match(r"^[0-9a-f]{8}:\s+((?:[0-9a-f]{2} ){1,16})", line)
        if found:
            data += bytes.fromhex(found.group(1).replace(" ", ""))
    return bytes(data)


@dataclass
class Bed:
    a: Host
    driver: QemuDriver
    hosts: dict[str, Replicas]
    b: Host
    driver_b: QemuDriver
    """A second VM host (h2's namespace), for live migration."""


@pytest.fixture
def netbed(tmp_path: Path) -> Iterator[Netbed]:
    require_netns()
    clean_leftovers()
    bed = Netbed(tmp_path)
    try:
        yield bed
    finally:
        bed.close([])


@pytest.fixture
async def bed(netbed: Netbed, tmp_path: Path) -> AsyncIterator[Bed]:
    kit = boot_kit()
    a, b, c = (netbed.host(label) for label in ("a", "b", "c"))
    a_to_b, b_addr = netbed.network.join(a.netns, b.netns)
    _, c_addr = netbed.network.join(a.netns, c.netns)
    servers = {
        host_id: Replicas(host_id, host.netns, ReplicaServer(
            tmp_path / host_id / "replicas", address, 0, commands=HostCommands(host.netns)))
        for host_id, host, address in (("h1", a, a_to_b), ("h2", b, b_addr), ("h3", c, c_addr))
    }  # fmt: skip
    b.underlay_ip = b_addr
    drivers = [qemu_driver(kit, tmp_path / host_id / "qemu", host.netns)
               for host_id, host in (("h1", a), ("h2", b))]  # fmt: skip
    try:
        for replicas in servers.values():
            await replicas.server.open()
        yield Bed(a, drivers[0], servers, b, drivers[1])
    finally:
        for driver in drivers:
            for vm in driver.inventory():
                await driver.destroy(vm.name)
            await driver.close()
        for replicas in servers.values():
            await replicas.server.shutdown()


def qemu_driver(kit: Path, root: Path, netns: str) -> QemuDriver:
    settings = QemuSettings(
        qemu_binary="qemu-system-x86_64", accel="tcg", kernel=kit / "vmlinux",
        initramfs=kit / "initramfs.gz", boot_timeout_s=90, netns=netns, nics=False,
    )  # fmt: skip
    return QemuDriver(
        settings, root, ImageCache(root / "images", kit), capacity=Resources(4000, 1024)
    )


def spec(*copies: ReplicaRef) -> VmSpec:
    disks = [
        DiskSpec(disk_id=f"{VM}-os", kind=DiskKind.OS, image="tiny"),
        DiskSpec(disk_id=DISK, kind=DiskKind.DATA, size_mib=64,
                 storage=DiskStorage.REPLICATED, replicas=list(copies)),
    ]  # fmt: skip
    return VmSpec(name=VM, size="Tiny", cpu_milli=1000, mem_mib=96, image="tiny", disks=disks)


async def in_guest(driver: QemuDriver, command: str, timeout_s: float = 60.0) -> str:
    return await qemukit.in_guest(driver, VM, command, timeout_s)


def write_marker(text: str, block: int) -> str:
    return f"echo {text} | dd of=/dev/vdb bs=512 seek={block} count=1 conv=sync,fsync 2>/dev/null"


def disk_report(driver: QemuDriver) -> tuple[ObservedState, list[str], list[str], dict[str, float]]:
    vm = next(vm for vm in driver.inventory() if vm.name == VM)
    [disk] = vm.disks
    return vm.state, disk.in_sync, disk.failed, disk.joining


COUNTER = (
    "(n=0; while [ $n -lt 100000 ]; do n=$((n+1)); echo $n | dd of=/dev/vdb bs=512 "
    "seek=$((100 + n % 50)) count=1 conv=sync,fsync 2>/dev/null && echo SYNCED=$n; done) & true"
)
SYNCED = re.compile(rb"SYNCED=(\d+)\r?\n")


async def test_a_failed_copy_stops_the_vm_until_dropped_and_a_new_copy_joins_in_step(
    bed: Bed,
) -> None:
    h1, h2, h3 = (bed.hosts[h] for h in ("h1", "h2", "h3"))
    await h1.hold(DISK)
    await h2.hold(DISK)
    await bed.driver.start(spec(h1.ref(), h2.ref()), 1)
    assert disk_report(bed.driver) == (ObservedState.RUNNING, ["h1", "h2"], [], {})
    assert not list((bed.driver.root / "disks").glob(f"{DISK}*")), "no local file for it"

    await in_guest(bed.driver, write_marker("MARKER-ONE", 0))
    for copy in (h1, h2):
        assert copy.read(bed.a.netns, 0, 10) == b"MARKER-ONE"

    # h2's replica server dies: the next write stops the VM, reported running, h2 failed
    start = bed.driver.console_read(VM, None, 0).end
    await h2.server.shutdown()
    await bed.driver.console_write(VM, f"{write_marker('MARKER-TWO', 1)}; echo W2''DONE\n".encode())
    await wait_until(
        lambda: disk_report(bed.driver)[2] == ["h2"], timeout_s=20, message="h2 reported failed"
    )
    assert disk_report(bed.driver)[0] is ObservedState.RUNNING
    assert b"W2DONE" not in bed.driver.console_read(VM, start, 1 << 20).data

    # the scheduler drops it: the VM goes on and the write is on the copy kept
    drop = SetDiskReplicas(name=VM, generation=1, disk_id=DISK, replicas=[h1.ref()])
    await bed.driver.set_disk_replicas(drop)
    await wait_until(
        lambda: b"W2DONE" in bed.driver.console_read(VM, start, 1 << 20).data,
        timeout_s=20,
        message="the stopped write completed",
    )
    assert disk_report(bed.driver) == (ObservedState.RUNNING, ["h1"], [], {})
    assert h1.read(bed.a.netns, 512, 10) == b"MARKER-TWO"

    # a counter writes with fsync while a copy on h3 joins
    await in_guest(bed.driver, COUNTER)
    await h3.hold(DISK)
    join = SetDiskReplicas(
        name=VM, generation=1, disk_id=DISK, replicas=[h1.ref()], joining=[h3.ref()]
    )
    await bed.driver.set_disk_replicas(join)
    await wait_until(
        lambda: disk_report(bed.driver)[1] == ["h1", "h3"], timeout_s=60, message="h3 in step"
    )
    await in_guest(bed.driver, write_marker("MARKER-THREE", 2))
    await in_guest(bed.driver, "kill %1 2>/dev/null; sleep 0.2; sync")
    synced = [int(n) for n in SYNCED.findall(bed.driver.console_read(VM, start, 1 << 22).data)]
    assert synced, "the counter ran"
    last = synced[-1]
    for copy in (h1, h3):
        assert copy.read(bed.a.netns, 0, 10) == b"MARKER-ONE"
        assert copy.read(bed.a.netns, 512, 10) == b"MARKER-TWO"
        assert copy.read(bed.a.netns, 1024, 12) == b"MARKER-THREE"
        block = copy.read(bed.a.netns, 512 * (100 + last % 50), 16).split(b"\n")[0]
        assert int(block) >= last, f"{copy.host_id} misses the synced count {last}"


async def test_live_migration_opens_the_same_copies_and_copies_no_replicated_disk(
    bed: Bed,
) -> None:
    h1, h2 = bed.hosts["h1"], bed.hosts["h2"]
    await h1.hold(DISK)
    await h2.hold(DISK)
    vm = spec(h1.ref(), h2.ref())
    await bed.driver.start(vm, 1)
    await in_guest(bed.driver, write_marker("BEFORE-MOVE", 0))
    endpoint = await bed.driver_b.prepare_incoming(vm, 1, bed.b.underlay_ip)
    await bed.driver.migrate_out(VM, endpoint, max_downtime_ms=100, max_bandwidth_mib_s=0)
    await bed.driver_b.finish_incoming(VM)
    assert not list((bed.driver_b.root / "disks").glob(f"{DISK}*")), "the disk was not copied"
    await in_guest(bed.driver_b, write_marker("AFTER-MOVE", 1))
    for copy in (h1, h2):
        assert copy.read(bed.b.netns, 0, 11) == b"BEFORE-MOVE"
        assert copy.read(bed.b.netns, 512, 10) == b"AFTER-MOVE"
    [moved] = bed.driver_b.inventory()
    assert (moved.state, moved.disks[0].in_sync) == (ObservedState.RUNNING, ["h1", "h2"])
