"""Replicated disks end to end with real parts: the scheduler, qemu agents each in a network
namespace and a fault domain of its own (their replica servers reach each other over one
underlay segment), a real guest whose OS disk and data disk are replicated.

The VM's host is lost (``kill -9`` of its agent, fence guard, QEMU and replica server, its data
directory removed): the VM runs on another host at a higher generation with what it wrote to
both disks, its event says it restarted with its disks (never "rebuilt"), each lost copy is
made again on a host that still runs, and every count the guest printed as synced (after its
``fsync`` returned) before the loss is on the disk afterwards.

Skipped without QEMU, root or the network tools; required in CI.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from cli.client import StratusClient
from common import codec, subjects
from common.messages import CreateVm, VmEvent, VmInfo, VmState
from common.spec_messages import DiskStorage
from rigs.chaos.consolewatch import alive
from rigs.counting import Copy, CounterWatch
from rigs.netqemu import NetRig
from tests.integration.helpers import wait_hosts_up
from tests.netkit import clean_leftovers, require_netns
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(300)]

BOOT_S = 120.0
FAILOVER_S = 90.0
REBUILD_S = 90.0
VM = "r-1"
SYNCED = re.compile(rb"SYNCED=(\d+)")
COUNTER_BLOCK = 100
"""The guest's counter writes ``n`` to block ``COUNTER_BLOCK + n`` of its data disk."""
COUNTER = (
    "(n=0; while [ $n -lt 60000 ]; do n=$((n+1)); echo $n | dd of=/dev/vdb bs=512"
    f" seek=$(({COUNTER_BLOCK}+n)) count=1 conv=sync,fsync 2>/dev/null && echo SYNCED=$n;"
    " done) & true"
)
"""Its echo reads ``SYNCED=$n``: never a count."""
MARK = (
    "echo os-mark > /marker && echo data-mark | dd of=/dev/vdb bs=512 conv=sync,fsync"
    " 2>/dev/null && sync && echo 3 > /proc/sys/vm/drop_caches && echo marked"
    " $(dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -n 1)"
)
READ_BACK = (
    "sync; echo 3 > /proc/sys/vm/drop_caches; cat /marker;"
    " dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -n 1"
)


@contextlib.contextmanager
def net_rig_of(kit: Path, workdir: Path, hosts: list[str], toml: str = "") -> Iterator[NetRig]:
    require_netns()
    clean_leftovers()
    made = NetRig(workdir, kit, scheduler_toml=toml)
    try:
        made.start(hosts)
        yield made
    finally:
        made.stop()


@pytest.fixture
def rig3(net_kit: Path, tmp_path: Path) -> Iterator[NetRig]:
    """nats-server, the scheduler and three qemu hosts h1, h2, h3 (fault domains fd-h1..h3)."""
    with net_rig_of(net_kit, tmp_path, ["h1", "h2", "h3"]) as made:
        yield made


@pytest.fixture
def rig4(net_kit: Path, tmp_path: Path) -> Iterator[NetRig]:
    """Four qemu hosts h1..h4 and a scheduler keeping three copies of every replicated disk."""
    hosts = ["h1", "h2", "h3", "h4"]
    with net_rig_of(net_kit, tmp_path, hosts, "[storage]\nreplicas = 3\n") as made:
        yield made


async def api_of(rig: NetRig) -> AsyncIterator[StratusClient]:
    nc = await nats.connect(rig.url, connect_timeout=5)
    try:
        yield StratusClient(nc, timeout_s=10.0)
    finally:
        await nc.close()


@pytest.fixture
async def api3(rig3: NetRig) -> AsyncIterator[StratusClient]:
    async for client in api_of(rig3):
        yield client


@pytest.fixture
async def api4(rig4: NetRig) -> AsyncIterator[StratusClient]:
    async for client in api_of(rig4):
        yield client


@contextlib.asynccontextmanager
async def vm_reasons(rig: NetRig, name: str) -> AsyncIterator[list[tuple[int, str]]]:
    """The VM's events while inside: (generation, reason)."""
    reasons: list[tuple[int, str]] = []

    async def on_event(msg: Msg) -> None:
        event = codec.event.decode(msg.data)
        if isinstance(event, VmEvent):
            reasons.append((event.generation, event.reason))

    nc = await nats.connect(rig.url, connect_timeout=5)
    try:
        await nc.subscribe(subjects.vm_event(name), cb=on_event)
        await nc.flush()
        yield reasons
    finally:
        await nc.close()


def copies(vm: VmInfo) -> list[list[tuple[str, str]]]:
    """Each disk's copies: (host, state)."""
    return [sorted((r.host, r.state) for r in disk.replicas) for disk in vm.disks]


async def running(client: StratusClient, timeout_s: float, *, avoid: str = "") -> VmInfo:
    seen: list[VmInfo] = []

    async def there() -> bool:
        seen[:] = [await client.get_vm(VM)]
        return seen[0].state is VmState.RUNNING and seen[0].host not in (None, avoid)

    await wait_until(there, timeout_s=timeout_s, interval_s=0.2, message=f"{VM} running")
    return seen[0]


async def fully_copied(client: StratusClient, hosts: set[str], count: int) -> VmInfo:
    """The VM once each of its disks has ``count`` current copies, all on ``hosts``."""
    seen: list[VmInfo] = []

    async def done() -> bool:
        seen[:] = [await client.get_vm(VM)]
        return all(
            len(disk) == count and all(s == "current" and h in hosts for h, s in disk)
            for disk in copies(seen[0])
        )

    await wait_until(done, timeout_s=REBUILD_S, interval_s=0.2, message="copies rebuilt")
    return seen[0]


async def the_copy(watch: CounterWatch, host: str) -> Copy:
    await watch.wait_for(lambda: any(c.host == host for c in watch.copies()), 30, "console")
    return [c for c in watch.copies() if c.host == host][-1]


def synced(watch: CounterWatch, copy: Copy) -> list[int]:
    return [int(n) for _, line in watch.follows[copy].lines for n in SYNCED.findall(line)]


def counter_blocks(rig: NetRig, host: str, disk_id: str, last: int) -> list[int]:
    """Blocks COUNTER_BLOCK + 1 .. + last of the host's copy of the disk (read from its file)."""
    path = rig.agents_dir / host / "replicas" / f"{disk_id}.qcow2"
    raw = path.with_suffix(".check")
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(path), str(raw)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with raw.open("rb") as f:
        f.seek(512 * (COUNTER_BLOCK + 1))
        data = f.read(512 * last)
    raw.unlink()
    blocks = [data[i : i + 512].split(b"\n")[0] for i in range(0, len(data), 512)]
    return [int(b) if b.isdigit() else 0 for b in blocks]


async def agent_restart_keeps_the_vm(rig: NetRig, client: StratusClient, vm: VmInfo) -> None:
    """``kill -9`` of the VM's agent and a new one: it adopts the running QEMU (whose command
    line names no disk file: every disk is replicated), which is neither restarted nor lost."""
    assert vm.host is not None
    log = rig.workdir / f"agent-{vm.host}.log"
    seen = log.stat().st_size
    pid_file = rig.agents_dir / vm.host / "qemu" / "vms" / VM / "qemu.pid"
    pid = int(pid_file.read_text())
    rig.kill_agent(vm.host)
    rig.start_agent(vm.host)

    def ready() -> str:
        with log.open("rb") as f:
            f.seek(seen)
            found = re.search(rb"qemu driver ready .*adopted=(\d+)", f.read())
        return found.group(1).decode() if found else ""

    await wait_until(lambda: bool(ready()), timeout_s=30, message="the new agent's driver")
    assert ready() == "1"
    assert alive(pid) and int(pid_file.read_text()) == pid
    again = await client.get_vm(VM)
    assert (again.state, again.host, again.generation) == (VmState.RUNNING, vm.host, vm.generation)


async def test_a_lost_host_s_replicated_vm_restarts_elsewhere_with_its_disks_and_synced_writes(
    rig3: NetRig, api3: StratusClient
) -> None:
    for host in rig3.hosts:
        rig3.start_agent(host)
    await wait_hosts_up(api3, 3)
    await api3.create_vm(
        CreateVm(name=VM, size="Tiny", data_disks_mib=[64], storage=DiskStorage.REPLICATED)
    )
    before = await running(api3, BOOT_S)
    assert before.host is not None
    lost = before.host
    assert [d.storage for d in before.disks] == [DiskStorage.REPLICATED] * 2
    before = await fully_copied(api3, set(rig3.hosts), 2)
    data_disk = before.disks[1].disk_id

    async with vm_reasons(rig3, VM) as reasons, CounterWatch(rig3.agents_dir, VM) as watch:
        source = await the_copy(watch, lost)
        marked = await watch.run(source, MARK)
        assert "marked data-mark" in marked, marked
        await watch.run(source, COUNTER)
        await watch.wait_for(lambda: len(synced(watch, source)) >= 20, 60, "synced counts")

        rig3.lose_host(lost)
        after = await running(api3, FAILOVER_S, avoid=lost)
        last = max(synced(watch, source))  # its console was read to its end meanwhile
        assert synced(watch, source) == list(range(1, last + 1))
        assert after.host is not None and after.generation > before.generation
        target = await the_copy(watch, after.host)
        out = await watch.run(target, READ_BACK, timeout_s=60)
        assert "os-mark" in out and "data-mark" in out, out
        seek = f"skip=$(({COUNTER_BLOCK}+{last}))"
        out = await watch.run(target, f"dd if=/dev/vdb bs=512 {seek} count=1 2>/dev/null")
        assert int(out.strip().splitlines()[-1].strip("\x00")) == last, out

        survivors = set(rig3.hosts) - {lost}
        rebuilt = await fully_copied(api3, survivors, 2)
        await agent_restart_keeps_the_vm(rig3, api3, after)
    assert any("restarted with its disks" in r for _, r in reasons), reasons
    assert not any("rebuilt" in r for _, r in reasons), reasons
    assert [d.disk_id for d in rebuilt.disks] == [d.disk_id for d in before.disks]
    for host in survivors:
        blocks = counter_blocks(rig3, host, data_disk, last)
        assert blocks == list(range(1, last + 1)), (host, blocks[:5], len(blocks))


async def test_with_three_copies_a_vm_survives_two_host_losses_one_after_the_other(
    rig4: NetRig, api4: StratusClient
) -> None:
    for host in rig4.hosts:
        rig4.start_agent(host)
    await wait_hosts_up(api4, 4)
    await api4.create_vm(
        CreateVm(name=VM, size="Tiny", data_disks_mib=[64], storage=DiskStorage.REPLICATED)
    )
    vm = await running(api4, BOOT_S)
    vm = await fully_copied(api4, set(rig4.hosts), 3)
    up = set(rig4.hosts)

    async with vm_reasons(rig4, VM) as reasons, CounterWatch(rig4.agents_dir, VM) as watch:
        assert vm.host is not None
        marked = await watch.run(await the_copy(watch, vm.host), MARK)
        assert "marked data-mark" in marked, marked
        for loss in (1, 2):
            assert vm.host is not None
            lost = vm.host
            rig4.lose_host(lost)
            up.discard(lost)
            after = await running(api4, FAILOVER_S, avoid=lost)
            assert after.host in up and after.generation > vm.generation
            assert after.host is not None
            out = await watch.run(await the_copy(watch, after.host), READ_BACK, timeout_s=60)
            assert "os-mark" in out and "data-mark" in out, (loss, out)
            # three copies while three hosts are up; then one on each of the two left
            vm = await fully_copied(api4, up, min(3, len(up)))
    restarts = {g for g, r in reasons if "restarted with its disks" in r}
    assert len(restarts) == 2, reasons
    assert not any("rebuilt" in r for _, r in reasons), reasons
