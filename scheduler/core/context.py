"""The step context: the one way a feature handler acts. Pure.

Handlers (``vms``, ``hosts``, ``images``, ``disks``) read the cluster state freely, and change
it only through a ``StepContext``: change a VM record (the transition table is checked here,
and nowhere else), mark a host or image record changed, emit an event, send commands to a host,
reply to a request. This is Nomad's split between the read-only ``State`` a scheduler reads and
the ``Planner`` it writes through.

One context lives for one step; what must outlast a step lives in ``Carry`` (volatile: a new
process starts with a fresh one, see ``core/step.py`` for why that is safe).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import msgspec

from common.config import SchedulerConfig
from common.fields import ErrorCode
from common.ids import HostId, VmName
from common.messages import (
    AgentCommand,
    HostEvent,
    HostState,
    JobRejected,
    MigrationOutcome,
    PrepareIncoming,
    Size,
    StartVm,
    VmEvent,
    VmState,
)
from common.network_messages import ConfigureNetworks, UpdateNetworks
from common.replica_messages import ConfigureReplicas, SetDiskReplicas, UpdateReplicas
from scheduler.core import transitions
from scheduler.core.contract import Action, Emit, Now, Reply, SendCommands
from scheduler.core.netwants import NetWants
from scheduler.core.replicawants import ReplicaWant
from scheduler.core.views import endpoint_infos, migration_info, nic_infos
from scheduler.placement.hostviews import HostViews
from scheduler.placement.pipeline import PlacementPolicy
from scheduler.placement.rebalance import MigrationBudget, Move
from scheduler.state.cluster import ClusterState
from scheduler.state.model import MigrationRecord, VmRecord
from scheduler.state.storage import DiskRecord, EndpointRecord, NicRecord


class Keep(enum.Enum):
    """A field left as it is by ``change_vm``."""

    KEEP = enum.auto()


KEEP: Final = Keep.KEEP
NETWORKS_KEY: Final = VmName("*networks")
"""What a host's ``ConfigureNetworks`` is remembered under in ``Carry.sent`` (no VM is named
so: ``*`` is not allowed in VM names)."""
REPLICAS_KEY: Final = VmName("*replicas")
"""And a host's ``ConfigureReplicas``."""


def command_key(command: AgentCommand) -> VmName:
    """Which earlier command a command replaces (for resend suppression): the VM's, the
    copy set of one of its disks, or the host's network or replica configuration."""
    if isinstance(command, StartVm | PrepareIncoming):
        return VmName(command.vm.name)
    if isinstance(command, ConfigureNetworks | UpdateNetworks):
        return NETWORKS_KEY
    if isinstance(command, ConfigureReplicas | UpdateReplicas):
        return REPLICAS_KEY
    if isinstance(command, SetDiskReplicas):
        return VmName(f"{command.name}*{command.disk_id}")
    return VmName(command.name)


@dataclass(slots=True)
class Carry:
    """What the core keeps from one step to the next, besides the records (never stored)."""

    event_seq: int
    sent: dict[HostId, dict[VmName, tuple[AgentCommand, float]]] = field(default_factory=dict)
    """The last command sent to each host for each VM, and when; only while it is younger than
    ``command_retry_s`` (an older one is repeated anyway, so it is forgotten: kept, the last
    start of every VM held a spec per VM for good, and the garbage collector walked them all)."""
    sent_order: deque[tuple[float, HostId, VmName]] = field(default_factory=deque)
    """What ``sent`` holds, oldest first (an entry sent again since is skipped when pruned)."""
    new_pending: list[VmName] = field(default_factory=list)
    """VMs that became pending since placement last ran."""
    capacity_changed: bool = True
    """Some capacity was freed or changed: every pending VM is tried again at the next tick."""
    drains_due: bool = True
    """A drain started or moved on: drains progress in this step even without a tick."""
    networks: NetWants = field(default_factory=NetWants)
    """Each host's desired network configuration as last computed and sent, and each network's
    peers (scheduler/core/hostnets.py)."""
    replicas: dict[HostId, ReplicaWant] = field(default_factory=dict)
    """Each host's desired replica set as last computed and sent
    (scheduler/core/hostreplicas.py)."""
    rebalance_queue: list[Move] = field(default_factory=list)
    """Moves the rebalancer planned that wait for a migration slot."""
    rebalance_budget: MigrationBudget | None = None
    """The rebalancer's rounds and moves of the last hour (scheduler/core/rebalancing.py);
    None: not yet rebuilt from the records since the start."""


@dataclass(slots=True)
class StepContext:
    state: ClusterState
    config: SchedulerConfig
    sizes: dict[str, Size]
    policy: PlacementPolicy
    views: HostViews
    now: Now
    carry: Carry
    actions: list[Action] = field(default_factory=list)

    # ------------------------------------------------------------------ change a VM record

    def change_vm(
        self,
        record: VmRecord,
        *,
        state: VmState | Keep = KEEP,
        reason: str | Keep = KEEP,
        host: HostId | Keep | None = KEEP,
        generation: int | Keep = KEEP,
        pending_since: datetime | Keep | None = KEEP,
        start_attempts: int | Keep = KEEP,
        failed_hosts: list[HostId] | Keep = KEEP,
        drained_from: HostId | Keep | None = KEEP,
        disks: list[DiskRecord] | Keep = KEEP,
        disk_serial: int | Keep = KEEP,
        recovering: bool | Keep = KEEP,
        nics: list[NicRecord] | Keep = KEEP,
        endpoints: list[EndpointRecord] | Keep = KEEP,
        migration: MigrationRecord | Keep | None = KEEP,
        max_generation: int | Keep = KEEP,
        migrated_at: datetime | Keep | None = KEEP,
    ) -> None:
        """Change fields of ``record``, keeping the indexes, the store and the event stream
        right: a change of state must be in the transition table, and is emitted."""
        entered = state is not KEEP and state is not record.state
        if state is not KEEP:
            transitions.check(record.state, state)
            if record.drained_from is not None and state in transitions.SETTLED_STATES:
                drained_from = None  # the move is over
        changes = (
            ("state", state),
            ("reason", reason),
            ("host", host),
            ("generation", generation),
            ("pending_since", pending_since),
            ("start_attempts", start_attempts),
            ("failed_hosts", failed_hosts),
            ("drained_from", drained_from),
            ("disks", disks),
            ("disk_serial", disk_serial),
            ("recovering", recovering),
            ("nics", nics),
            ("endpoints", endpoints),
            ("migration", migration),
            ("max_generation", max_generation),
            ("migrated_at", migrated_at),
        )
        self.state.before_change(record)
        for name, value in changes:  # the signature above is what mypy checks
            if value is not KEEP:
                setattr(record, name, value)
        record.updated_at = self.now.wall
        self.state.after_change(record)
        if entered:
            self.emit_vm(record)

    def add_vm(self, record: VmRecord) -> None:
        """A new record (created, or created again after a delete), already ``pending``."""
        self.state.add_vm(record)
        self.state.dirty_vms.add(record.name)
        self.carry.new_pending.append(record.name)
        self.emit_vm(record)

    def want_placement(self, name: VmName) -> None:
        """``name`` became pending: placement looks at it in this step."""
        self.carry.new_pending.append(name)

    def capacity_changed(self) -> None:
        """Capacity was freed or changed: every pending VM is tried again at the next tick."""
        self.carry.capacity_changed = True

    def host_changed(self, host: HostId) -> None:
        """A host record changed: stored with this step, and seen anew by placement."""
        self.state.host_changed(host)
        self.carry.capacity_changed = True

    # ------------------------------------------------------------------ emit

    def next_seq(self) -> int:
        self.carry.event_seq += 1
        return self.carry.event_seq

    def emit_vm(
        self,
        record: VmRecord,
        outcome: MigrationOutcome | None = None,
        migration: MigrationRecord | None = None,
    ) -> None:
        """A VM event; ``outcome`` (with the ``migration`` it ended, if it did) for the events
        that start and end a live migration."""
        about = migration or record.migration
        event = VmEvent(
            seq=self.next_seq(),
            time=self.now.wall,
            name=record.name,
            state=record.state,
            host=record.host,
            generation=record.generation,
            reason=record.reason,
            size=record.size,
            nics=nic_infos(record.nics) if record.nics else [],
            endpoints=endpoint_infos(record.endpoints) if record.endpoints else [],
            migration=migration_info(about) if about is not None else None,
            migration_outcome=outcome,
        )
        self.actions.append(Emit(event))

    def emit_host(
        self, host: HostId, state: HostState, reason: str, drain_remaining: int
    ) -> HostEvent:
        record = self.state.hosts.get(host)
        event = HostEvent(
            seq=self.next_seq(),
            time=self.now.wall,
            host_id=host,
            state=state,
            reason=reason,
            cordoned=record.cordoned if record else False,
            draining=record.draining if record else False,
            drain_remaining=drain_remaining,
        )
        self.actions.append(Emit(event))
        return event

    def reject_job(
        self, subject: str, request_id: str | None, code: ErrorCode, detail: str
    ) -> None:
        event = JobRejected(
            seq=self.next_seq(),
            time=self.now.wall,
            subject=subject,
            request_id=request_id,
            code=code,
            detail=detail,
        )
        self.actions.append(Emit(event))

    # ------------------------------------------------------------------ send and reply

    def send(self, host: HostId, commands: list[AgentCommand]) -> None:
        """Send commands, skipping any sent recently with the same content (the agent is
        idempotent, so a repeat after ``command_retry_s`` is safe and heals lost messages)."""
        if not commands:
            return
        due: list[AgentCommand] = []
        now_s, retry_s = self.now.mono_s, self.config.command_retry_s
        self._forget_old(now_s, retry_s)
        sent = self.carry.sent.setdefault(host, {})
        order = self.carry.sent_order
        for cmd in commands:
            key = command_key(cmd)
            last = sent.get(key)
            if (
                last is None
                or (last[0] is not cmd and last[0] != cmd)
                or now_s - last[1] >= retry_s
            ):
                sent[key] = (cmd, now_s)
                order.append((now_s, host, key))
                due.append(cmd)
        if due:
            self.actions.append(SendCommands(host, tuple(due)))

    def _forget_old(self, now_s: float, retry_s: float) -> None:
        """Forget the commands sent ``retry_s`` or longer ago: ``send`` repeats them anyway,
        and ``hosts``/``hostnets`` read only younger ones."""
        order, sent = self.carry.sent_order, self.carry.sent
        while order and now_s - order[0][0] >= retry_s:
            at_s, host, key = order.popleft()
            by_key = sent.get(host)
            if by_key is not None and (last := by_key.get(key)) is not None and last[1] == at_s:
                del by_key[key]

    def forget_sent(self, host: HostId, name: VmName | None = None) -> None:
        """Forget what was sent to ``host`` (about ``name``, or about every VM)."""
        if name is None:
            self.carry.sent.pop(host, None)
        else:
            self.carry.sent.get(host, {}).pop(name, None)

    def reply(self, token: int, body: msgspec.Struct | None) -> None:
        """Answer request ``token`` (a job is acked when ``body`` is None)."""
        self.actions.append(Reply(token, body))
