"""The end-to-end floor: the messages of ``bench.e2e``'s API phase passed by two stand-ins with
no scheduler and no host behind them.

``bench.e2e --part bus-alone`` starts the same nats-server and the same bench client as the
``stratus`` part, and in place of the scheduler and the simulated-host pool two processes that
only pass messages, each with the same nats-py client and codecs as the product:

- the scheduler stand-in answers each ``vm create`` request with a ``VmReply`` (the VM with one
  disk and its NIC), sends its host (round robin) a ``HostCommands`` with a ``StartVm``, and
  publishes ``pending`` and ``scheduled`` to the events stream through the product's own
  ``EventPublisher`` (one publish per event with its ``Nats-Msg-Id``, the stream's ack read
  back); when a host reports the VM running, it publishes ``running``;
- the host stand-in answers each ``HostCommands`` at once with a ``Heartbeat`` naming the new
  VMs running (the pool reports a host's whole inventory, 50 ms after a change), and sends
  every host's heartbeat once a second.

Its heartbeats go unanswered (the scheduler acks each one, and every ack also renews the
host's lease), so the real flow has more messages than this one: its floor is higher.

Nothing is decided, stored or checked: no placement, no addresses, no SQLite, no state. What it
reaches is what the message flow alone allows on this machine, with every process on the same
two cores; the difference to the ``stratus`` part is what the control plane's work costs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from datetime import UTC, datetime

import nats
import uvloop
from nats.aio.msg import Msg

from common import codec, subjects
from common.messages import (
    DiskInfo,
    DiskKind,
    Heartbeat,
    HostCommands,
    HostEvent,
    HostState,
    ObservedState,
    ObservedVm,
    StartVm,
    VmEvent,
    VmInfo,
    VmReply,
    VmState,
)
from common.network_messages import NicInfo, NicSpec
from common.resources import Resources
from common.spec_messages import DiskSpec, VmSpec
from common.streams import ensure_stream, events_stream_config
from scheduler.shell.eventpub import EventPublisher, Row

CAPACITY = Resources(128_000, 512 * 1024)
HOST_PREFIX = "alone"
PENDING_BYTES = 256 * 1024 * 1024
HEARTBEAT_S = 1.0


def host_ids(count: int) -> list[str]:
    return [f"{HOST_PREFIX}-{n:05d}" for n in range(count)]


async def scheduler(url: str, hosts: int) -> None:
    """Answer, command and publish, per message; until killed."""
    nc = await nats.connect(url, pending_size=PENDING_BYTES)
    await ensure_stream(nc.jetstream(), events_stream_config())
    outbox: asyncio.Queue[Row] = asyncio.Queue()
    publisher = EventPublisher(nc, outbox, lambda _seq: None)
    seqs = itertools.count(1)
    turn = itertools.cycle(host_ids(hosts))
    running: set[str] = set()
    up: set[str] = set()

    def emit(event: VmEvent | HostEvent) -> None:
        outbox.put_nowait((event.seq, subjects.of_event(event), codec.encode(event)))

    def vm_event(name: str, state: VmState, host: str | None, size: str) -> VmEvent:
        now = datetime.now(UTC)
        return VmEvent(
            seq=next(seqs), time=now, name=name, state=state, host=host, generation=1, size=size
        )

    async def on_create(msg: Msg) -> None:
        request = codec.create_vm.decode(msg.data)
        host, now = next(turn), datetime.now(UTC)
        nic = NicInfo(
            vnet=request.nics[0].vnet if request.nics else "",
            ip="10.0.0.4",
            mac="02:00:00:00:00:04",
            prefix_len=16,
            gateway="10.0.0.1",
        )
        info = VmInfo(
            name=request.name,
            size=request.size,
            cpu_milli=1000,
            mem_mib=1792,
            image="tiny",
            region="local",
            availability_set=None,
            state=VmState.SCHEDULED,
            host=host,
            generation=1,
            reason="",
            created_at=now,
            updated_at=now,
            disks=[
                DiskInfo(
                    disk_id=f"{request.name}-os",
                    kind=DiskKind.OS,
                    size_mib=1024,
                    image="tiny",
                    host=host,
                )
            ],
            nics=[nic],
        )
        await msg.respond(codec.encode(VmReply(vm=info)))
        spec = VmSpec(
            name=request.name,
            size=request.size,
            cpu_milli=1000,
            mem_mib=1792,
            image="tiny",
            disks=[
                DiskSpec(
                    disk_id=f"{request.name}-os", kind=DiskKind.OS, size_mib=1024, image="tiny"
                )
            ],
            nics=[
                NicSpec(
                    index=0,
                    vnet=nic.vnet,
                    vni=4097,
                    mac=nic.mac,
                    ip=nic.ip,
                    prefix_len=16,
                    gateway=nic.gateway,
                )
            ],
        )
        command = HostCommands(host_id=host, commands=[StartVm(vm=spec, generation=1)])
        await nc.publish(subjects.host_commands(host), codec.encode(command))
        emit(vm_event(request.name, VmState.PENDING, None, request.size))
        emit(vm_event(request.name, VmState.SCHEDULED, host, request.size))

    async def on_heartbeat(msg: Msg) -> None:
        report = codec.heartbeat.decode(msg.data)
        if report.host_id not in up:
            up.add(report.host_id)
            emit(
                HostEvent(
                    seq=next(seqs),
                    time=datetime.now(UTC),
                    host_id=report.host_id,
                    state=HostState.UP,
                )
            )
        for vm in report.vms:
            if vm.state is ObservedState.RUNNING and vm.name not in running:
                running.add(vm.name)
                emit(vm_event(vm.name, VmState.RUNNING, report.host_id, ""))

    await nc.subscribe(subjects.VM_CREATE, queue="stand-in", cb=on_create)
    await nc.subscribe(subjects.HEARTBEAT_WILDCARD, cb=on_heartbeat)
    await nc.flush()
    await publisher.run()


async def hosts_pool(url: str, hosts: int) -> None:
    """Report every host once a second, and each started VM running at once; until killed."""
    nc = await nats.connect(url, pending_size=PENDING_BYTES)
    seqs = dict.fromkeys(host_ids(hosts), 0)

    async def report(host: str, vms: list[ObservedVm]) -> None:
        seqs[host] += 1
        beat = Heartbeat(host_id=host, seq=seqs[host], boot_id="boot-1", capacity=CAPACITY, vms=vms)
        await nc.publish(subjects.host_heartbeat(host), codec.encode(beat))

    async def on_commands(msg: Msg) -> None:
        batch = codec.host_commands.decode(msg.data)
        started = [
            ObservedVm(
                name=c.vm.name,
                generation=c.generation,
                state=ObservedState.RUNNING,
                cpu_milli=c.vm.cpu_milli,
                mem_mib=c.vm.mem_mib,
            )
            for c in batch.commands
            if isinstance(c, StartVm)
        ]
        await report(batch.host_id, started)

    await nc.subscribe("stratus.host.*.cmd", cb=on_commands)
    await nc.flush()
    while True:  # every host once a second, as the pool's heartbeats (and up once heard)
        for host in seqs:
            await report(host, [])
        await asyncio.sleep(HEARTBEAT_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.e2e_alone", description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["scheduler", "hosts"])
    parser.add_argument("--nats", required=True)
    parser.add_argument("--hosts", type=int, required=True)
    args = parser.parse_args(argv)
    role = scheduler if args.role == "scheduler" else hosts_pool
    uvloop.run(role(args.nats, args.hosts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
