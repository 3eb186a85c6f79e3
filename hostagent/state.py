"""The host agent's pure core: ``AgentState.handle(stimulus, now_s) -> list[Instruction]``.

Pure, synchronous and deterministic (no await, no I/O, time is an input), in the style of Dask's
``WorkerState.handle_stimulus``. It owns everything the agent decides:

- the claim on the host id (:mod:`hostagent.claim`): nothing runs until an ack accepts it;
- the lease, renewed by heartbeat acks (matched to the heartbeat they answer);
- fencing: without a valid lease every executing VM is paused, never destroyed; a fenced VM
  resumes only on ``ResumeVm`` at exactly its current generation, and is destroyed only when
  ``StopVm``/``DeleteVm``/a newer ``StartVm`` says it is stale;
- command admission by (vm, generation): repeated commands change nothing, stale ones are
  ignored, starts and resumes arriving without a lease are dropped; commands for one VM run in
  order (one driver operation at a time), different VMs proceed concurrently;
- starts, stops and deletes, and the failed starts kept until the scheduler clears them
  (:mod:`hostagent.heldvms`);
- the inventory (the driver's, plus those failed starts) and the heartbeat report, which leaves
  out an inventory the scheduler says it holds;
- the host's networks (:mod:`hostagent.netgate`): a start waits for the networks it needs;
- live migration (:mod:`hostagent.migration`), as source and as destination.

The real agent (:mod:`hostagent.agent`), the simulated pool (:mod:`hostagent.simpool`) and the
scheduler's property tests all drive this one class.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from operator import attrgetter
from typing import assert_never

from msgspec.structs import replace

from common.ids import HostId
from common.messages import (
    AgentCommand,
    CaptureDisk,
    DeleteVm,
    Heartbeat,
    HeartbeatAck,
    ObservedState,
    ObservedVm,
    PrepareIncoming,
    ResumeVm,
    StartVm,
    StopVm,
)
from common.migration_messages import CancelMigration, FinishIncoming, MigrateOut
from common.network_messages import ConfigureNetworks, UpdateNetworks
from common.replica_messages import (
    ConfigureReplicas,
    ReplicaStatus,
    SetDiskReplicas,
    UpdateReplicas,
)
from hostagent.claim import HostClaim
from hostagent.epoch import EpochGate, from_leader
from hostagent.execlog import ExecEvent
from hostagent.heldvms import HeldVms
from hostagent.lease import Lease
from hostagent.migration import Migrations
from hostagent.netgate import NetworkGate
from hostagent.replicagate import ReplicaGate
from hostagent.report import InventoryReport, SentReports, timing_of
from hostagent.stimuli import (
    REPORT_CHANGED,
    AckReceived,
    AdoptCpuOvercommit,
    CommandsReceived,
    DriverCancelMigration,
    DriverDestroy,
    DriverFinishIncoming,
    DriverForget,
    DriverMigrateOut,
    DriverPause,
    DriverPrepareIncoming,
    DriverResume,
    DriverSetReplicas,
    DriverStart,
    DriverStop,
    FenceTick,
    HeartbeatDue,
    Instruction,
    LeaseRenewed,
    NetworksApplied,
    Note,
    OpDone,
    RecordExecution,
    ReplicasApplied,
    RunCapture,
    SendHeartbeat,
    Stimulus,
    TimingAdopted,
)
from hostagent.vmcommands import (
    NEEDS_LEASE,
    NOT_HERE,
    VmCommand,
    command_vm_name,
    failed,
    find,
    resume,
    set_replicas,
)

_EXECUTING = (ObservedState.RUNNING, ObservedState.STARTING)
_NAME = attrgetter("name")


class AgentState:
    def __init__(
        self, template: Heartbeat, *, heartbeat_interval_s: float, fence_after_s: float
    ) -> None:
        """``template`` holds the host's identity; ``seq``, ``fenced`` and ``vms`` are filled in.
        The timing knobs hold until the scheduler's first ack brings its own."""
        self.host_id = HostId(template.host_id)
        self.template = template
        self.heartbeat_interval_s = heartbeat_interval_s
        self.fence_after_s = fence_after_s
        self.lease = Lease()
        self.epochs = EpochGate()
        """Refuses a deposed scheduler leader's commands and acks (hostagent/epoch.py)."""
        self.claim = HostClaim()
        self.fenced = False
        self.report = InventoryReport()
        self.net = NetworkGate()
        self.replicas = ReplicaGate()
        failed: dict[str, ObservedVm] = {}
        self.mig = Migrations(self.host_id, template.underlay_ip, failed)
        self.held = HeldVms(self.net, self.mig, failed)
        self._queues: dict[str, deque[VmCommand]] = {}
        """Commands per VM, in order; the head is the one being carried out."""
        self._waiting: set[str] = set()
        """VMs whose head command waits for a driver operation."""
        self._pausing: set[str] = set()
        self._sent = SentReports()
        self._cpu_overcommit: float | None = None
        self._sorted_from: Sequence[ObservedVm] = ()
        self._sorted: list[ObservedVm] = []
        """The last driver inventory sorted (a driver that keeps its inventory hands out the same
        list until a VM changes: the report, and its digest, are not made again)."""

    # ------------------------------------------------------------------ queries

    def inventory(self, vms: Sequence[ObservedVm]) -> list[ObservedVm]:
        """Every VM held: the driver's ``vms``, plus failed starts not yet cleared, with their
        migration reports."""
        failed = self.held.failed
        if not failed and not self.mig.reports:  # the driver's VMs alone: sorted once per list
            if vms is not self._sorted_from:
                self._sorted_from, self._sorted = vms, sorted(vms, key=_NAME)
            return self._sorted
        held = [*vms, *failed.values()] if failed else vms
        return self.mig.attach(sorted(held, key=_NAME))

    def idle(self) -> bool:
        """No command is queued or waits for the driver or the networks, and no pause is under
        way."""
        return not (self._queues or self._pausing or self.net.pending or self.replicas.pending)

    # ------------------------------------------------------------------ the one entry point

    def handle(self, stimulus: Stimulus, now_s: float) -> list[Instruction]:
        out: list[Instruction] = []
        match stimulus:
            case CommandsReceived(commands=commands, vms=vms, epoch=epoch):
                if from_leader(self.epochs, epoch, "commands", out):
                    self._receive(commands, vms, now_s, out)
            case OpDone():
                self._op_done(stimulus, now_s, out)
            case FenceTick(vms=vms):
                self._enforce(vms, now_s, out)
            case HeartbeatDue(vms=vms, progress=progress, replicas=replicas):
                self.mig.observe(progress)
                out.append(SendHeartbeat(self._heartbeat(vms, replicas, now_s)))
            case AckReceived(ack=ack):
                if from_leader(self.epochs, ack.epoch, "heartbeat ack", out):
                    self._ack(ack, now_s, out)  # a deposed leader's ack renews nothing
            case NetworksApplied():
                self._networks_applied(stimulus, now_s, out)
            case ReplicasApplied():
                if self.replicas.applied(stimulus, out):
                    out.append(REPORT_CHANGED)
            case _:
                assert_never(stimulus)
        return out

    # ------------------------------------------------------------------ heartbeats and the lease

    def _heartbeat(
        self, vms: Sequence[ObservedVm], replicas: Sequence[ReplicaStatus], now_s: float
    ) -> Heartbeat:
        self._sent.seq += 1
        heartbeat = self.report.fill(
            replace(
                self.template,
                seq=self._sent.seq,
                fenced=self.fenced,
                vms=self.inventory(vms),
                network_digest=self.net.digest,
                replica_digest=self.replicas.digest,
                replicas=list(replicas),
            )
        )
        self._sent.sent(heartbeat, now_s, self.fence_after_s)
        return heartbeat

    def _ack(self, ack: HeartbeatAck, now_s: float, out: list[Instruction]) -> None:
        if ack.host_id != self.host_id:
            out.append(
                Note.warning(
                    "heartbeat ack for another host dropped host_id=%s seq=%d", ack.host_id, ack.seq
                )
            )
            return
        sent = self._sent.match(ack, now_s, self.fence_after_s)
        if sent is None:
            out.append(Note.debug("heartbeat ack unmatched or late seq=%d", ack.seq))
            return
        if ack.refused:  # another live agent holds the host id: no lease, no command
            self.claim.refused(ack, ack.claim_after_s + self.heartbeat_interval_s, now_s, out)
            return
        self.claim.accepted(out)
        self._adopt_timing(ack, out)
        if self.report.adopt(ack, sent.omitted):
            out.append(REPORT_CHANGED)
        ratio = ack.cpu_overcommit
        if ratio >= 1.0 and ratio != self._cpu_overcommit:
            self._cpu_overcommit = ratio
            out.append(AdoptCpuOvercommit(ratio))
        self._renew(sent.sent_at_s, now_s, out)

    def _adopt_timing(self, ack: HeartbeatAck, out: list[Instruction]) -> None:
        timing = timing_of(ack, out)
        if timing is not None and timing != (self.heartbeat_interval_s, self.fence_after_s):
            self.heartbeat_interval_s, self.fence_after_s = timing
            out.append(TimingAdopted(ack.scheduler_id, *timing))

    def _renew(self, sent_at_s: float, now_s: float, out: list[Instruction]) -> None:
        self.lease = self.lease.renewed(sent_at_s, self.fence_after_s)
        out.append(LeaseRenewed(self.lease))
        if self.fenced and not self.lease.expired(now_s):
            self.fenced = False
            out.append(REPORT_CHANGED)
            out.append(Note.info("lease renewed, unfenced host_id=%s", self.host_id))

    def _enforce(self, vms: Sequence[ObservedVm], now_s: float, out: list[Instruction]) -> None:
        """Without a valid lease, pause every executing VM (paused, never destroyed)."""
        if not self.lease.expired(now_s):
            return
        self.mig.fence(out)  # an outgoing migration ends before its VM is paused
        executing = [vm for vm in vms if vm.state in _EXECUTING]
        if not self.fenced and (self.lease.ever_held or executing):
            self.fenced = True
            out.append(REPORT_CHANGED)
            expired_for_s = now_s - self.lease.expires_at_s if self.lease.ever_held else 0.0
            out.append(
                Note.warning(
                    "lease expired, fencing host_id=%s executing=%d expired_for_s=%.2f",
                    self.host_id,
                    len(executing),
                    expired_for_s,
                )
            )
        for vm in executing:
            if vm.name not in self._pausing:
                self._pausing.add(vm.name)
                out.append(DriverPause(vm.name, vm.generation))

    # ------------------------------------------------------------------ command admission

    def _receive(
        self,
        commands: Sequence[AgentCommand],
        vms: Sequence[ObservedVm],
        now_s: float,
        out: list[Instruction],
    ) -> None:
        """Queue ``commands`` per VM and start on every idle VM's queue.

        Starts, resumes and migration steps that arrive while the lease is expired are dropped:
        sent before a partition healed, they may already run elsewhere, and an ack arriving right
        behind them would otherwise let them run. The scheduler resends them while they are still
        due. A ``CancelMigration`` is not queued: it ends the migration its VM's queue waits for."""
        if self.lease.expired(now_s):
            kept = [c for c in commands if not isinstance(c, NEEDS_LEASE)]
            if refused := len(commands) - len(kept):
                out.append(Note.info("commands refused without a lease refused=%d", refused))
            commands = kept
        if not self.claim.admitted:  # perhaps a second agent under this host id
            self.claim.hold(commands, out)
            return
        touched: dict[str, None] = {}
        for config in (c for c in commands if isinstance(c, ConfigureNetworks | UpdateNetworks)):
            self.net.receive(config, out)  # before the starts of the batch that need it
        for command in commands:
            if isinstance(command, ConfigureNetworks | UpdateNetworks):
                continue
            if isinstance(command, ConfigureReplicas | UpdateReplicas):
                self.replicas.receive(command, out)
                continue
            if isinstance(command, CancelMigration):
                self.mig.cancel(command, out)
                continue
            name = command_vm_name(command)
            self._queues.setdefault(name, deque()).append(command)
            touched[name] = None
        for name in touched:
            if name not in self._waiting:
                self._advance(name, vms, now_s, out)

    def _advance(
        self, name: str, vms: Sequence[ObservedVm], now_s: float, out: list[Instruction]
    ) -> None:
        """Carry out ``name``'s queued commands until one waits for the driver."""
        queue = self._queues[name]
        while queue:
            if self._begin(queue[0], vms, now_s, out):
                self._waiting.add(name)
                return
            queue.popleft()
        del self._queues[name]

    def _begin(
        self, command: VmCommand, vms: Sequence[ObservedVm], now_s: float, out: list[Instruction]
    ) -> bool:
        """Decide ``command``; True when it waits for a driver operation."""
        leased = not self.lease.expired(now_s)
        match command:
            case StartVm() | PrepareIncoming():
                return self.held.start(command, vms, leased, out)
            case StopVm() | DeleteVm():
                return self.held.remove(command, vms, out)
            case ResumeVm():
                return resume(command, self.held.find(command.name, vms), leased, out)
            case CaptureDisk():
                out.append(RunCapture(command, self.held.find(command.name, vms) is not None))
                return True
            case MigrateOut():
                return self.mig.migrate_out(command, find(vms, command.name), leased, out)
            case FinishIncoming():
                return self.mig.finish(command, find(vms, command.name), leased, out)
            case SetDiskReplicas():
                return set_replicas(command, self.held.find(command.name, vms), leased, out)
            case _:
                assert_never(command)

    def _networks_applied(
        self, done: NetworksApplied, now_s: float, out: list[Instruction]
    ) -> None:
        """The host's networks changed: the starts waiting for them are judged again."""
        if self.net.applied(done, out):
            out.append(REPORT_CHANGED)
        waiting, self.net.waiting = self.net.waiting, set()
        for name in sorted(waiting):
            if name in self._queues:
                self._waiting.discard(name)
                self._advance(name, done.vms, now_s, out)

    # ------------------------------------------------------------------ driver results

    def _op_done(self, done: OpDone, now_s: float, out: list[Instruction]) -> None:
        op = done.op
        if isinstance(op, DriverPause):
            self._paused(op, done.error, out)
            return
        if isinstance(op, DriverCancelMigration):
            self.mig.cancel_done(op, done.error, out)
            return
        if isinstance(op, DriverSetReplicas) and done.error is not None:
            out.append(failed("disk replicas", op.name, op.generation, done.error))
        if self._finish(done, now_s, out):
            return  # the same command waits for another driver operation
        self._waiting.discard(op.name)
        self._queues[op.name].popleft()
        self._advance(op.name, done.vms, now_s, out)

    def _finish(self, done: OpDone, now_s: float, out: list[Instruction]) -> bool:
        """Take in the result of the head command's operation; True when it continues."""
        op, error = done.op, done.error
        match op:
            case DriverStart():
                if self.held.started(op, done, out):
                    self._enforce(done.vms, now_s, out)  # started without a lease: paused at once
            case DriverStop() | DriverDestroy():
                head, leased = self._queues[op.name][0], not self.lease.expired(now_s)
                return self.held.removed(op, error, head, leased, out)
            case DriverResume(name=name, generation=generation):
                if error is not None:
                    out.append(RecordExecution(name, generation, ExecEvent.PAUSE))
                    out.append(failed("resume", name, generation, error))
                else:
                    out.append(Note.info("vm resumed vm=%s generation=%d", name, generation))
            case DriverForget(name=name, generation=generation):
                if error is not None:
                    out.append(failed("disk removal", name, generation, error))
                out.append(Note.debug(NOT_HERE, name, generation))
            case RunCapture() | DriverSetReplicas():
                pass  # a failed change of disk replicas: the scheduler's next look sends it again
            case DriverPrepareIncoming() | DriverMigrateOut() | DriverFinishIncoming():
                if self.mig.done(op, done, out):
                    self._enforce(done.vms, now_s, out)  # it runs: perhaps as the lease ran out
            case DriverPause() | DriverCancelMigration():
                raise AssertionError("pauses and cancels are not queued")
            case _:
                assert_never(op)
        return False

    def _paused(self, op: DriverPause, error: str | None, out: list[Instruction]) -> None:
        self._pausing.discard(op.name)
        if error is not None:
            out.append(failed("pause", op.name, op.generation, error))
            return
        out.append(RecordExecution(op.name, op.generation, ExecEvent.PAUSE))
        out.append(Note.info("vm fenced vm=%s generation=%d", op.name, op.generation))
