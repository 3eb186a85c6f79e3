"""Live migration with real parts: the scheduler, two qemu agents each in a network namespace of
its own (joined by a veth underlay that QEMU's migration stream and the disks' NBD copy cross),
real guests that count on their serial console every 10 ms (rigs/counting.py).

- ``vm migrate``: the guest goes on counting on the other host without a restart, what it wrote
  to its OS and data disks before is read back there from the disks, its address, MAC and
  endpoint move with it, the source QEMU is gone, the generation grew by one step;
- ``host drain``: three counting guests move live, none restarts.

Skipped without QEMU, root or the network tools; required in CI.
"""

from __future__ import annotations

import contextlib

import pytest

from cli.client import StratusClient
from common.messages import CreateVm, VmInfo, VmState
from common.network_messages import AddEndpoint, CreateVnet, NicRequest
from rigs.chaos.consolewatch import alive
from rigs.counting import Copy, CounterWatch
from rigs.netqemu import NetRig
from tests.integration.helpers import wait_hosts_up
from tests.netkit import http_get
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(420)]

BOOT_S = 120.0
MOVE_S = 90.0
COUNTED = 30
"""Counts seen on the source before it is moved."""


async def settled(client: StratusClient, name: str, timeout_s: float, **where: object) -> VmInfo:
    """The VM once it runs, with no migration under way, matching ``where``."""
    seen: list[VmInfo] = []

    async def there() -> bool:
        seen[:] = [await client.get_vm(name)]
        vm = seen[0]
        return (
            vm.state is VmState.RUNNING
            and vm.migration is None
            and all(getattr(vm, k) == v for k, v in where.items())
        )

    await wait_until(there, timeout_s=timeout_s, interval_s=0.2, message=f"{name} at {where}")
    return seen[0]


async def source_copy(watch: CounterWatch, host: str) -> Copy:
    await watch.wait_for(lambda: any(c.host == host for c in watch.copies()), 30, "console")
    [copy] = [c for c in watch.copies() if c.host == host]
    return copy


async def counting(watch: CounterWatch, copy: Copy) -> None:
    await watch.start_counting(copy)
    await watch.wait_for(lambda: (watch.last_count(copy) or 0) >= COUNTED, 30, "counting")


async def moved_without_a_restart(watch: CounterWatch, source: Copy, target_host: str) -> Copy:
    """The copy on ``target_host`` took over the count where ``source`` left it."""
    await watch.wait_for(lambda: watch.counting_on(target_host) is not None, MOVE_S, "counts")
    target = watch.counting_on(target_host)
    assert target is not None and target.pid != source.pid
    await watch.wait_for(lambda: len(watch.counts(target)) >= 20, 30, "counts on the target")
    downtime_s, last, first = watch.handover(source, target)
    # No restart: the destination goes on from the source's last count (a line the source had
    # in flight may show on both), never from 1; and it counts up from there.
    assert last - 2 <= first <= last + 50, (last, first)
    numbers = [n for _, n in watch.counts(target)]
    assert numbers == sorted(numbers) and len(set(numbers)) >= len(numbers) - 1, numbers[:40]
    assert downtime_s < 5.0, downtime_s
    await wait_until(lambda: not alive(source.pid), timeout_s=30, message="source QEMU gone")
    return target


async def test_a_counting_guest_migrates_live_with_its_disks_address_and_endpoint(
    net_rig: NetRig, net_api: StratusClient
) -> None:
    net_rig.start_agent("h1")
    await wait_hosts_up(net_api, 1)
    await net_api.create_vnet(CreateVnet(name="net-m", cidr="10.214.2.0/24"))
    nic = NicRequest(vnet="net-m")
    await net_api.create_vm(CreateVm(name="m-1", size="Tiny", nics=[nic], data_disks_mib=[64]))
    before = await settled(net_api, "m-1", BOOT_S, host="h1")
    before = await net_api.add_endpoint(AddEndpoint(vm="m-1", vm_port=80))
    net_rig.start_agent("h2")
    await wait_hosts_up(net_api, 2)

    async with CounterWatch(net_rig.agents_dir, "m-1") as watch:
        source = await source_copy(watch, "h1")
        marked = await watch.run(
            source,
            "echo os-mark > /marker && echo data-mark | dd of=/dev/vdb bs=512 conv=fsync"
            " 2>/dev/null && sync && echo 3 > /proc/sys/vm/drop_caches && echo marked"
            " $(dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -n 1)",
        )
        assert "marked data-mark" in marked, marked
        await counting(watch, source)

        reply = await net_api.migrate_vm("m-1")
        assert reply.migration is not None and reply.migration.target == "h2"
        after = await settled(net_api, "m-1", MOVE_S, host="h2")
        target = await moved_without_a_restart(watch, source, "h2")

        # What it wrote to its disks is on the destination's disks (the page cache dropped, so
        # the reads go to the disks), and it kept counting into its OS disk meanwhile.
        out = await watch.run(
            target,
            "sync; echo 3 > /proc/sys/vm/drop_caches; cat /marker;"
            " dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -n 1; cat /var/count",
        )
        assert "os-mark" in out and "data-mark" in out, out
        last_written = int(out.strip().splitlines()[-1])
        assert last_written >= watch.handover(source, target)[1], out

    assert after.generation > before.generation
    assert [(n.ip, n.mac) for n in after.nics] == [(n.ip, n.mac) for n in before.nics]
    [endpoint] = after.endpoints
    assert endpoint.address == net_rig.hosts["h2"].underlay_ip and endpoint.public_port is not None
    port = endpoint.public_port

    async def answers() -> bool:
        return http_get(None, net_rig.hosts["h2"].outside, port) == "stratus-vm m-1"

    await wait_until(answers, timeout_s=60, message="endpoint on h2")


async def test_a_drain_moves_three_counting_guests_live(
    net_rig: NetRig, net_api: StratusClient
) -> None:
    net_rig.start_agent("h1")
    await wait_hosts_up(net_api, 1)
    names = ["d-1", "d-2", "d-3"]
    for name in names:
        await net_api.create_vm(CreateVm(name=name, size="Tiny"))
    before = {name: await settled(net_api, name, BOOT_S, host="h1") for name in names}
    net_rig.start_agent("h2")
    await wait_hosts_up(net_api, 2)

    sources = {}
    async with contextlib.AsyncExitStack() as stack:
        watches = {
            name: await stack.enter_async_context(CounterWatch(net_rig.agents_dir, name))
            for name in names
        }
        for name, watch in watches.items():
            sources[name] = await source_copy(watch, "h1")
            await counting(watch, sources[name])
        await net_api.drain_host("h1")
        for name, watch in watches.items():
            after = await settled(net_api, name, MOVE_S, host="h2")
            assert after.generation > before[name].generation
            await moved_without_a_restart(watch, sources[name], "h2")
    [h1] = [h for h in await net_api.list_hosts() if h.host_id == "h1"]
    assert h1.vms == 0
