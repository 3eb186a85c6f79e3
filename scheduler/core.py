"""SchedulerCore: inputs in, actions out. Pure, synchronous and deterministic.

The shell (scheduler/app.py) owns all I/O: it decodes messages into inputs, calls ``step`` with
the current time, commits the changed records, and only then carries out the returned actions.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from common import codec, subjects
from common.config import SchedulerConfig
from common.ids import HostId, VmName
from common.messages import (
    AgentCommand,
    CreateVm,
    DeleteVm,
    ErrorBody,
    ErrorCode,
    Heartbeat,
    HeartbeatAck,
    HostEvent,
    HostInfo,
    HostReply,
    HostState,
    JobRejected,
    ObservedState,
    ObservedVm,
    Size,
    StartVm,
    StopVm,
    VmEvent,
    VmRef,
    VmReply,
    VmState,
)
from common.resources import ZERO
from common.sizes import find_size
from scheduler import drain, hostops, storageops
from scheduler.events import (
    HOST_OPS,
    IMAGE_OPS,
    VM_STORAGE_OPS,
    Ack,
    Action,
    Emit,
    HeartbeatReceived,
    Input,
    InvalidJob,
    Mutation,
    Now,
    Op,
    Reconnected,
    Reply,
    SendCommands,
    Tick,
)
from scheduler.hostviews import HostViews
from scheduler.liveness import expired_hosts, fresh_window, renew_windows
from scheduler.placement.pipeline import (
    Placed,
    PlacementPolicy,
    could_ever_fit,
    place_on_index,
)
from scheduler.reconciler import Outcome, Transition, reconcile_host, spec_of
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostRecord, HostRuntime, PlacementRequest, VmRecord
from scheduler.views import vm_info


def error(code: ErrorCode, detail: str) -> VmReply:
    return VmReply(error=ErrorBody(code=code, detail=detail))


class SchedulerCore:
    """The single writer of cluster state."""

    def __init__(
        self, config: SchedulerConfig, state: ClusterState, *, scheduler_id: str, event_seq: int
    ) -> None:
        self.config = config
        self.state = state
        self.scheduler_id = scheduler_id
        self.event_seq = event_seq
        self.sizes: dict[str, Size] = config.all_sizes()
        self.policy = PlacementPolicy(scorer=config.scorer)
        self._actions: list[Action] = []
        self._sent: dict[HostId, dict[VmName, tuple[AgentCommand, float]]] = {}
        self.views = HostViews(config, state)
        """The last command sent to each host for each VM, and when."""
        self._new_pending: list[VmName] = []
        self._capacity_changed = True
        self._recovering: set[VmName] = set()
        self._drains_due = True
        self._drain_reported: dict[HostId, int] = {}

    def start(self, now: Now) -> None:
        """Grant every known host a fresh window: a restart never declares healthy hosts dead."""
        self.state.runtimes = fresh_window(self.state.hosts, now.mono_s)
        storageops.ensure_builtin(self, now)

    # ------------------------------------------------------------------ the loop's entry point

    def step(self, inputs: list[Input], now: Now) -> list[Action]:
        """Handle a batch of inputs; return the actions to carry out once state is committed."""
        self._actions = []
        replies: list[tuple[Mutation, VmName | None, VmReply | None]] = []
        host_replies: list[tuple[Mutation, HostId | HostReply]] = []
        ticked = False
        for item in inputs:
            match item:
                case Mutation() if item.op in HOST_OPS:
                    host_replies.append((item, hostops.host_op(self, item, now)))
                case Mutation() if item.op in IMAGE_OPS:
                    self._image_op(item, now)
                case Mutation():
                    replies.append(self._mutate(item, now))
                case InvalidJob():
                    self._reject_job(item.subject, item.request_id, item.code, item.detail, now)
                    self._actions.append(Reply(item.token, None))
                case HeartbeatReceived():
                    self._heartbeat(item.heartbeat, item.token, now)
                case Tick() | Reconnected():
                    ticked |= self._periodic(item, now)
        if ticked:
            self._check_liveness(now)
            self._expire_pending(now)
            storageops.progress_captures(self, now)
        if ticked or self._drains_due:
            hostops.progress_drains(self, now)
        self._place_pending(now, everything=ticked and self._capacity_changed)
        for mutation, name, reply in replies:
            self._answer(mutation, name, reply, now)
        for mutation, result in host_replies:
            hostops.answer_host(self, mutation, result, now)
        actions, self._actions = self._actions, []
        return actions

    def _periodic(self, item: Tick | Reconnected, now: Now) -> bool:
        """True for a tick (the periodic work is due); after the scheduler's own NATS outage,
        renew every host's window first: nobody could be heard, so nobody is judged on it."""
        if isinstance(item, Reconnected):
            renew_windows(self.state.runtimes, self.state.hosts, now.mono_s)
            return False
        return True

    # ------------------------------------------------------------------ API mutations

    def _mutate(self, item: Mutation, now: Now) -> tuple[Mutation, VmName | None, VmReply | None]:
        """Apply a mutation; the reply is built after placement so it shows the outcome."""
        request_id = item.body.request_id
        if request_id is not None and request_id in self.state.replies:
            return item, None, self.state.replies[request_id]
        body = item.body
        if item.op is Op.CREATE:
            assert isinstance(body, CreateVm)
            outcome = self._create(body, now)
        elif item.op in VM_STORAGE_OPS:
            outcome = storageops.vm_op(self, item.op, body, now)
        else:
            assert isinstance(body, VmRef)
            outcome = self._change(item.op, VmName(body.name), now)
        if isinstance(outcome, VmReply):
            return item, None, outcome
        return item, outcome, None

    def _answer(self, item: Mutation, name: VmName | None, reply: VmReply | None, now: Now) -> None:
        if reply is None:
            assert name is not None
            reply = VmReply(vm=vm_info(self.state.vms[name]))
            if item.body.request_id is not None:
                self.state.remember_reply(item.body.request_id, reply)
        if item.via_job and reply.error is not None:
            self._reject_job(
                item.job_subject, item.body.request_id, reply.error.code, reply.error.detail, now
            )
        self._actions.append(Reply(item.token, reply))

    def _create(self, body: CreateVm, now: Now) -> VmName | VmReply:
        size = find_size(self.sizes, body.size)
        if size is None:
            known = ", ".join(sorted(self.sizes))
            return error(ErrorCode.UNKNOWN_SIZE, f"unknown size {body.size!r}; known: {known}")
        name = VmName(body.name)
        existing = self.state.vms.get(name)
        if existing is not None and existing.state is not VmState.DELETED:
            same = (existing.size, existing.image, existing.region, existing.availability_set) == (
                size.name,
                body.image,
                body.region,
                body.availability_set,
            )
            if same:
                return name
            return error(ErrorCode.CONFLICT, f"vm {name!r} exists with a different spec")
        image = storageops.image_for_create(self, body.image)
        if isinstance(image, VmReply):
            return image
        request = PlacementRequest(name, size.resources, body.region)
        if not could_ever_fit(request, self.views.empty()):
            where = f"region {body.region!r}" if body.region else "any region"
            return error(
                ErrorCode.INSUFFICIENT_CAPACITY,
                f"size {size.name} ({size.resources}) is larger than every host in {where}",
            )
        record = VmRecord(
            name=name,
            size=size.name,
            cpu_milli=size.cpu_milli,
            mem_mib=size.mem_mib,
            image=body.image,
            region=body.region,
            availability_set=body.availability_set,
            state=VmState.PENDING,
            generation=existing.generation + 1 if existing is not None else 1,
            reason="waiting for placement",
            created_at=now.wall,
            updated_at=now.wall,
            pending_since=now.wall,
        )
        storageops.give_disks(record, image, body.data_disks_mib)
        self.state.add_vm(record)
        self.state.dirty_vms.add(name)
        self._new_pending.append(name)
        self._emit_vm(record, now)
        return name

    def _change(self, op: Op, name: VmName, now: Now) -> VmName | VmReply:
        record = self.state.vms.get(name)
        if record is None:
            return error(ErrorCode.NOT_FOUND, f"vm {name!r} does not exist")
        state = record.state
        if state is VmState.DELETED and op is not Op.DELETE:
            return error(ErrorCode.NOT_FOUND, f"vm {name!r} was deleted")
        if state is VmState.DELETING and op is not Op.DELETE:
            return error(ErrorCode.INVALID_STATE, f"vm {name!r} is being deleted")
        if op is Op.STOP:
            self._stop(record, now)
        elif op is Op.START:
            if state in (VmState.STOPPED, VmState.FAILED):
                self._set(
                    record,
                    now,
                    state=VmState.PENDING,
                    reason="waiting for placement",
                    pending_since=now.wall,
                    start_attempts=0,
                    failed_hosts=[],
                )
                self._new_pending.append(name)
        else:
            self._delete(record, now)
        return name

    def _stop(self, record: VmRecord, now: Now) -> None:
        if record.drained_from is not None:  # a stop asked for during a drain's move wins
            self._set(record, now, drained_from=None, reason="stop requested")
        if record.holds_capacity and record.state is not VmState.STOPPING:
            self._set(record, now, state=VmState.STOPPING, reason="stop requested")
            self._command(record.host, record.name, record.generation, now, stop=True)
        elif record.state in (VmState.PENDING, VmState.FAILED):
            self._set(record, now, state=VmState.STOPPED, reason="stopped before placement")

    def _delete(self, record: VmRecord, now: Now) -> None:
        if record.holds_capacity:
            if record.state is not VmState.DELETING:
                self._set(record, now, state=VmState.DELETING, reason="delete requested")
                self._command(record.host, record.name, record.generation, now, stop=False)
        elif record.state is not VmState.DELETED:
            self._set(record, now, state=VmState.DELETED, reason="deleted")
            self.state.forget_set_member(record)
            storageops.drop_disks(self, record, now)

    def _command(
        self, host: HostId | None, name: VmName, generation: int, now: Now, *, stop: bool
    ) -> None:
        assert host is not None
        cmd: AgentCommand = (
            StopVm(name=name, generation=generation)
            if stop
            else DeleteVm(name=name, generation=generation)
        )
        self._send(host, [cmd], now)

    def _reject_job(
        self, subject: str, request_id: str | None, code: ErrorCode, detail: str, now: Now
    ) -> None:
        self.event_seq += 1
        event = JobRejected(
            seq=self.event_seq,
            time=now.wall,
            subject=subject,
            request_id=request_id,
            code=code,
            detail=detail,
        )
        self._actions.append(Emit(subjects.JOB_REJECTED, event))

    # ------------------------------------------------------------------ cordon and drain
    # (scheduler/hostops.py)

    def host_info(self, host: HostId, now: Now) -> HostInfo:
        return hostops.host_info(self, host, now)

    def _image_op(self, item: Mutation, now: Now) -> None:
        """Gallery operations, answered at once (scheduler/storageops.py)."""
        self._actions += storageops.image_actions(self, item, now)

    def _stopped(self, record: VmRecord, reason: str, now: Now) -> None:
        """A stop finished: the VM is deallocated, or placed again if a drain is moving it."""
        if record.drained_from is None:
            self._release(record, VmState.STOPPED, reason, now)
        else:
            why = f"moved off draining host {record.drained_from}; re-placing"
            self._release(record, VmState.PENDING, why, now)

    # ------------------------------------------------------------------ heartbeats

    def _heartbeat(self, hb: Heartbeat, token: int, now: Now) -> None:
        host = HostId(hb.host_id)
        runtime = self.state.runtimes.get(host)
        if runtime is None:
            runtime = self.state.runtimes[host] = HostRuntime(last_seen_s=now.mono_s)
        runtime.last_seen_s = now.mono_s
        reconcile = self._learn(host, hb, runtime, now)
        self._actions.append(Ack(token, self._ack(hb, runtime)))
        if reconcile:
            self._reconcile(host, runtime, now)

    def _learn(self, host: HostId, hb: Heartbeat, runtime: HostRuntime, now: Now) -> bool:
        """Take in what a report says; True when the host must be reconciled."""
        if runtime.boot_id == hb.boot_id and hb.seq <= runtime.last_seq:
            return False  # an older report overtaken by a newer one: nothing new to learn
        runtime.boot_id, runtime.last_seq, runtime.fenced = hb.boot_id, hb.seq, hb.fenced
        if not hb.vms_omitted:
            self._register(host, hb, now)
            runtime.observed = {VmName(vm.name): vm for vm in hb.vms}
            runtime.inventory_digest = hb.inventory_digest
            return True
        if hb.inventory_digest == "" or hb.inventory_digest != runtime.inventory_digest:
            expected = self._expected_inventory(host)
            if expected is None or codec.inventory_digest(expected) != hb.inventory_digest:
                # An inventory not held (a restart, a host declared dead): alive, but nothing
                # else is learnt until the agent, told so by the ack, reports in full (at once).
                return False
            # After a restart: the host holds exactly what the records say it runs.
            runtime.observed = {VmName(vm.name): vm for vm in expected}
            runtime.inventory_digest = hb.inventory_digest
            runtime.settled = False
        self._register(host, hb, now)
        # Unchanged on both sides since a reconcile that found it right: nothing to do.
        return not runtime.settled or host in self.state.touched_hosts

    def _expected_inventory(self, host: HostId) -> list[ObservedVm] | None:
        """The inventory a host reports when it runs just what the records place on it (None
        if one of its VMs is in transition: no report can be predicted then)."""
        inventory: list[ObservedVm] = []
        for name in sorted(self.state.by_host.get(host, ())):
            record = self.state.vms[name]
            if record.state is not VmState.RUNNING:
                return None
            inventory.append(
                ObservedVm(
                    name=name,
                    generation=record.generation,
                    state=ObservedState.RUNNING,
                    cpu_milli=record.cpu_milli,
                    mem_mib=record.mem_mib,
                )
            )
        return inventory

    def _reconcile(self, host: HostId, runtime: HostRuntime, now: Now) -> None:
        self.state.touched_hosts.discard(host)
        assigned = {name: self.state.vms[name] for name in self.state.by_host.get(host, ())}
        result = reconcile_host(host, assigned, runtime.observed)
        orphaned = sum((vm.resources for vm in result.orphans), ZERO)
        if orphaned != runtime.orphaned:
            runtime.orphaned = orphaned
            self.state.stale_views.add(host)
            self._capacity_changed = True
        runtime.settled = not result.transitions and not result.commands
        for transition in result.transitions:
            self._apply(transition, host, now)
        self._send(host, result.commands, now)

    def _ack(self, hb: Heartbeat, runtime: HostRuntime) -> HeartbeatAck:
        return HeartbeatAck(
            host_id=hb.host_id,
            seq=hb.seq,
            scheduler_id=self.scheduler_id,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            fence_after_s=self.config.fence_after_s,
            cpu_overcommit=hb.cpu_overcommit or self.config.cpu_overcommit,
            inventory_digest=runtime.inventory_digest,
        )

    def _register(self, host: HostId, hb: Heartbeat, now: Now) -> None:
        record = self.state.hosts.get(host)
        fresh = HostRecord(
            host_id=host,
            region=hb.region,
            fault_domain=hb.fault_domain,
            capacity=hb.capacity,
            labels=dict(hb.labels),
            cpu_overcommit=hb.cpu_overcommit,
            driver=hb.driver,
            up=True,
            cordoned=record.cordoned if record else False,
            draining=record.draining if record else False,
            boot_id=hb.boot_id,
        )
        if record == fresh:
            return
        self.state.hosts[host] = fresh
        self.state.host_changed(host)
        self._capacity_changed = True
        self.views.forget_empty()
        if record is None or not record.up:
            reason = "registered" if record is None else "heartbeats resumed"
            self._emit_host(host, HostState.UP, reason, now)

    def _apply(self, transition: Transition, host: HostId, now: Now) -> None:
        record = self.state.vms[transition.name]
        match transition.outcome:
            case Outcome.STARTING:
                self._set(record, now, state=VmState.STARTING, reason="")
            case Outcome.RUNNING:
                self._set(record, now, state=VmState.RUNNING, reason="")
                self._recovering.discard(record.name)
                storageops.settle_disks(self, record, host, now)
            case Outcome.VANISHED:
                self._set(record, now, state=VmState.STARTING, reason=transition.reason)
            case Outcome.STOPPED:
                self._stopped(record, "stopped", now)
            case Outcome.DELETED:
                self._release(record, VmState.DELETED, "deleted", now)
                self.state.forget_set_member(record)
            case Outcome.START_FAILED:
                self._start_failed(record, host, transition, now)

    def _start_failed(self, record: VmRecord, host: HostId, t: Transition, now: Now) -> None:
        attempts = record.start_attempts + 1
        why = f"start failed on {host}: {t.reason}"
        if t.retryable and attempts < self.config.max_start_attempts:
            self._release(record, VmState.PENDING, f"{why}; trying another host", now)
            self._set(
                record, now, start_attempts=attempts, failed_hosts=[*record.failed_hosts, host]
            )
        else:
            self._release(record, VmState.FAILED, why, now)
            self._set(record, now, start_attempts=attempts)

    # ------------------------------------------------------------------ liveness

    def _check_liveness(self, now: Now) -> None:
        up = [host for host, record in self.state.hosts.items() if record.up]
        for host in expired_hosts(self.state.runtimes, up, now.mono_s, self.config.dead_after_s):
            self._declare_dead(host, now)

    def _declare_dead(self, host: HostId, now: Now) -> None:
        runtime = self.state.runtimes[host]
        age = now.mono_s - runtime.last_seen_s
        record = self.state.hosts[host]
        record.up = False
        self.state.host_changed(host)
        self.views.forget_empty()
        self._emit_host(host, HostState.DOWN, f"no heartbeat for {age:.1f}s", now)
        runtime.observed = {}
        runtime.inventory_digest = ""
        runtime.settled = False
        runtime.orphaned = ZERO
        self.state.stale_views.add(host)
        for name in sorted(self.state.by_host.get(host, ())):
            vm = self.state.vms[name]
            if vm.state is VmState.STOPPING:
                self._stopped(vm, f"host {host} declared dead", now)
            elif vm.state is VmState.DELETING:
                self._release(vm, VmState.DELETED, f"host {host} declared dead", now)
                self.state.forget_set_member(vm)
            else:
                self._set(vm, now, state=VmState.LOST, reason=f"host {host} declared dead")
                self._release(vm, VmState.PENDING, f"host {host} declared dead; re-placing", now)
                self._recovering.add(name)
        self._sent.pop(host, None)

    def _expire_pending(self, now: Now) -> None:
        limit_s = self.config.placement_timeout_s
        for name in list(self.state.pending):
            record = self.state.vms[name]
            since = record.pending_since or record.created_at
            if (now.wall - since).total_seconds() > limit_s:
                why = f"placement timed out after {limit_s:g}s: {record.reason}"
                self._set(record, now, state=VmState.FAILED, reason=why)
                self._recovering.discard(name)

    # ------------------------------------------------------------------ placement

    def _place_pending(self, now: Now, *, everything: bool) -> None:
        if everything:
            names = list(self.state.pending)
            self._capacity_changed = False
        else:
            names = [n for n in self._new_pending if n in self.state.pending]
        self._new_pending = []
        if not names:
            return
        records = [self.state.vms[name] for name in names]
        requests = [
            PlacementRequest(
                r.name,
                r.resources,
                r.region,
                r.availability_set,
                frozenset(r.failed_hosts),
                pinned_host=storageops.pinned_host(self, r, now),
            )
            for r in records
        ]
        sets = {r.availability_set for r in records if r.availability_set is not None}
        members = {s: self.views.set_fault_domains(s) for s in sets}
        results = place_on_index(requests, self.views.index(), self.policy, members)
        # A placement not carried out below must not linger as a reservation in the index.
        self.state.stale_views.update(r.host_id for r in results if isinstance(r, Placed))
        starts: dict[HostId, list[AgentCommand]] = defaultdict(list)
        recovered: dict[HostId, int] = defaultdict(int)
        for record, result in zip(records, results, strict=True):
            if not isinstance(result, Placed):
                reason = result.summary()
                if record.reason != reason:
                    self._set(record, now, reason=reason)
                    self._emit_vm(record, now)
                continue
            if record.name in self._recovering:
                if recovered[result.host_id] >= self.config.recovery_per_host_per_tick:
                    self._capacity_changed = True  # try again next tick
                    continue
                recovered[result.host_id] += 1
            self._set(record, now, state=VmState.SCHEDULED, host=result.host_id, reason="")
            starts[result.host_id].append(StartVm(vm=spec_of(record), generation=record.generation))
        for host, commands in starts.items():
            self._send(host, commands, now)

    # ------------------------------------------------------------------ helpers

    def _send(self, host: HostId, commands: list[AgentCommand], now: Now) -> None:
        """Send commands, skipping any sent recently with the same content (the agent is
        idempotent, so a repeat after ``command_retry_s`` is safe and heals lost messages)."""
        if not commands:
            return
        due: list[AgentCommand] = []
        sent = self._sent.setdefault(host, {})
        for cmd in commands:
            key = VmName(cmd.vm.name if isinstance(cmd, StartVm) else cmd.name)
            last = sent.get(key)
            if (
                last is None
                or last[0] != cmd
                or now.mono_s - last[1] >= self.config.command_retry_s
            ):
                sent[key] = (cmd, now.mono_s)
                due.append(cmd)
        if due:
            self._actions.append(SendCommands(host, tuple(due)))

    def _set(self, record: VmRecord, now: Now, **changes: object) -> None:
        emit = "state" in changes and changes["state"] != record.state
        if record.drained_from is not None and changes.get("state") in drain.SETTLED_STATES:
            changes["drained_from"] = None  # the move is over
        self.state.update(record, updated_at=now.wall, **changes)
        if emit:
            self._emit_vm(record, now)

    def _release(self, record: VmRecord, state: VmState, reason: str, now: Now) -> None:
        """Take the VM off its host: a new generation, so any copy left there is stale."""
        if record.host is not None:
            self._sent.get(record.host, {}).pop(record.name, None)
        pending_since: datetime | None = now.wall if state is VmState.PENDING else None
        self._set(
            record,
            now,
            state=state,
            host=None,
            generation=record.generation + 1,
            reason=reason,
            pending_since=pending_since,
        )
        if state is VmState.PENDING:
            self._new_pending.append(record.name)
        self._capacity_changed = True

    def _emit_vm(self, record: VmRecord, now: Now) -> None:
        self.event_seq += 1
        event = VmEvent(
            seq=self.event_seq,
            time=now.wall,
            name=record.name,
            state=record.state,
            host=record.host,
            generation=record.generation,
            reason=record.reason,
            size=record.size,
        )
        self._actions.append(Emit(subjects.vm_event(record.name), event))

    def _emit_host(self, host: HostId, state: HostState, reason: str, now: Now) -> HostEvent:
        self.event_seq += 1
        record = self.state.hosts.get(host)
        event = HostEvent(
            seq=self.event_seq,
            time=now.wall,
            host_id=host,
            state=state,
            reason=reason,
            cordoned=record.cordoned if record else False,
            draining=record.draining if record else False,
            drain_remaining=hostops.drain_remaining(self, host),
        )
        self._actions.append(Emit(subjects.host_event(host), event))
        return event
