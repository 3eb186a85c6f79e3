"""A harness for driving the pure core by hand: inputs in, actions out, time as a number."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec

from common.config import SchedulerConfig
from common.ids import HostId, VmName
from common.messages import (
    AgentCommand,
    CreateVm,
    Heartbeat,
    HostRef,
    ObservedState,
    ObservedVm,
    VmEvent,
    VmRef,
    VmReply,
)
from common.migration_messages import MigrateVm
from common.network_messages import (
    AddEndpoint,
    CreateVnet,
    RemoveEndpoint,
    VnetRef,
    VnetReply,
)
from common.resources import Resources
from hostagent.report import InventoryReport, omitted_digest
from scheduler.core.contract import (
    Ack,
    Action,
    Emit,
    HeartbeatReceived,
    Input,
    Mutation,
    Now,
    Op,
    Reply,
    SendCommands,
    Tick,
)
from scheduler.core.step import SchedulerCore
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostRecord, VmRecord
from scheduler.state.storage import ImageRecord, NetCounters, VnetRecord

Body = CreateVm | VmRef | HostRef | AddEndpoint | RemoveEndpoint | CreateVnet | VnetRef | MigrateVm
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
HOST_CAPACITY = Resources(8000, 16384)
T = TypeVar("T")


class CoreKit:
    def __init__(self, **config: object) -> None:
        defaults: dict[str, object] = {
            "heartbeat_interval_s": 1.0,
            "fence_after_s": 4.0,
            "dead_after_s": 6.0,
        }
        defaults.update(config)
        self.config = msgspec.convert(defaults, SchedulerConfig)
        self.state = ClusterState()
        self.core = SchedulerCore(self.config, self.state, scheduler_id="test", event_seq=0)
        self.t = 0.0
        self.tokens = itertools.count(1)
        self.seqs: dict[str, int] = {}
        self.core.start(self.now())
        self.actions: list[Action] = []

    def restart(self, *, reload: bool = False) -> None:
        """A new scheduler process on the same records: nothing volatile survives (with
        ``reload``, the records go through their stored encoding, as a real restart does)."""
        self.state.touched_hosts.clear()
        self.state.stale_views.clear()
        if reload:
            self.state = ClusterState.from_records(
                [_stored(r, VmRecord) for r in self.state.vms.values()],
                [_stored(h, HostRecord) for h in self.state.hosts.values()],
                dict(self.state.replies),
                [_stored(i, ImageRecord) for i in self.state.images.values()],
                [_stored(v, VnetRecord) for v in self.state.vnets.values()],
                _stored(self.state.counters, NetCounters),
            )
        self.core = SchedulerCore(
            self.config, self.state, scheduler_id="test", event_seq=self.core.event_seq
        )
        self.core.start(self.now())

    def now(self) -> Now:
        return Now(self.t, EPOCH + timedelta(seconds=self.t))

    def advance(self, seconds: float) -> list[Action]:
        self.t += seconds
        return self.step(Tick())

    def step(self, *inputs: Input) -> list[Action]:
        self.result = self.core.step(list(inputs), self.now())
        self.state.check_invariants()
        self.core.views.check()
        self.actions = self.result.actions
        return self.actions

    def mutate(self, op: Op, body: CreateVm | VmRef | AddEndpoint | RemoveEndpoint) -> VmReply:
        reply = self.ask(op, body)
        assert isinstance(reply, VmReply)
        return reply

    def ask(self, op: Op, body: Body) -> msgspec.Struct | None:
        """Step one mutation; its reply."""
        token = next(self.tokens)
        actions = self.step(Mutation(op, body, token))
        replies = [a for a in actions if isinstance(a, Reply) and a.token == token]
        assert len(replies) == 1
        return replies[0].body

    def host_op(self, op: Op, host: str, *, cold: bool = False) -> list[Action]:
        body = HostRef(host_id=host, cold=cold)
        return self.step(Mutation(op, body, next(self.tokens)))

    def vnet(self, name: str, cidr: str, region: str | None = None) -> VnetReply:
        reply = self.ask(Op.VNET_CREATE, CreateVnet(name=name, cidr=cidr, region=region))
        assert isinstance(reply, VnetReply)
        return reply

    def delete_vnet(self, name: str) -> VnetReply:
        reply = self.ask(Op.VNET_DELETE, VnetRef(name=name))
        assert isinstance(reply, VnetReply)
        return reply

    def create(self, name: str, size: str = "Small", **kw: object) -> VmReply:
        return self.mutate(Op.CREATE, CreateVm(name=name, size=size, **kw))  # type: ignore[arg-type]

    def heartbeat(
        self,
        host: str,
        vms: list[ObservedVm] | None = None,
        *,
        capacity: Resources = HOST_CAPACITY,
        fault_domain: str = "fd-0",
        region: str = "local",
        boot_id: str = "boot-1",
        report: InventoryReport | None = None,
        underlay_ip: str = "",
        network_digest: str = "",
        **replica: Any,
    ) -> list[Action]:
        """One heartbeat of ``host``; through ``report`` (an agent's), an inventory the core
        holds already goes as its digest alone, and one it lacked is sent again in full."""
        seq = self.seqs[host] = self.seqs.get(host, 0) + 1
        hb = Heartbeat(
            host_id=host,
            seq=seq,
            boot_id=boot_id,
            capacity=capacity,
            region=region,
            fault_domain=fault_domain,
            vms=vms or [],
            underlay_ip=underlay_ip,
            network_digest=network_digest,
            **replica,  # replica_port, replica_digest, replicas, disk_capacity_mib
        )
        if report is None:
            return self.step(HeartbeatReceived(hb, next(self.tokens)))
        hb = report.fill(hb)
        actions = self.step(HeartbeatReceived(hb, next(self.tokens)))
        (ack,) = acks(actions)
        if report.adopt(ack.ack, omitted_digest(hb)):
            return actions + self.heartbeat(
                host,
                vms,
                capacity=capacity,
                fault_domain=fault_domain,
                region=region,
                boot_id=boot_id,
                report=report,
                underlay_ip=underlay_ip,
                network_digest=network_digest,
                **replica,
            )
        return actions

    def vm(self, name: str) -> VmRecord:
        return self.state.vms[VmName(name)]

    def host(self, host: str) -> HostRecord:
        return self.state.hosts[HostId(host)]

    def vms_on(self, host: str) -> set[VmName]:
        """The VMs holding capacity on ``host`` (empty if none)."""
        return self.state.by_host.get(HostId(host), set())

    def allocated(self, host: str) -> Resources:
        return self.state.allocated[HostId(host)]

    def running_on(self, host: str) -> list[ObservedVm]:
        """The inventory a well-behaved agent would report: every VM assigned to it, running."""
        return [
            ObservedVm(
                name=r.name,
                generation=r.generation,
                state=ObservedState.RUNNING,
                cpu_milli=r.cpu_milli,
                mem_mib=r.mem_mib,
            )
            for r in self.state.vms.values()
            if r.host == host and r.holds_capacity
        ]


def _stored(record: T, kind: type[T]) -> T:
    return msgspec.json.decode(msgspec.json.encode(record), type=kind)


def commands(actions: list[Action], host: str | None = None) -> list[AgentCommand]:
    return [
        c
        for a in actions
        if isinstance(a, SendCommands) and (host is None or a.host_id == host)
        for c in a.commands
    ]


def vm_events(actions: list[Action]) -> list[VmEvent]:
    return [a.event for a in actions if isinstance(a, Emit) and isinstance(a.event, VmEvent)]


def acks(actions: list[Action]) -> list[Ack]:
    return [a for a in actions if isinstance(a, Ack)]
