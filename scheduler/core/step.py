"""SchedulerCore: inputs in, a ``StepResult`` out. Pure, synchronous and deterministic.

The shell (scheduler/shell/app.py) owns all I/O: it decodes messages into inputs, calls ``step``
with the current time, stores the records the result names, and only then carries out its
actions. ``step`` only dispatches: each input goes to its feature handler (``vms``, ``hosts``,
``images``, ``disks``; networks and migrations get rooms of their own beside them), and every
handler acts through the one ``StepContext`` of the step.

What a restart keeps: everything in the records. VMs being recovered from a dead host carry
``VmRecord.recovering`` (the recovery rate limit holds across a restart), and a draining host
its last reported count (``HostRecord.drain_reported``). The rest is volatile on purpose: host
liveness starts with a fresh window (``start``), the memory of commands sent (``Carry.sent``)
only saves repeats of idempotent commands, and "capacity changed"/"drains due" start true, so
the first tick places every pending VM and moves every drain on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import assert_never

import msgspec
from msgspec.structs import replace

from common.config import SchedulerConfig
from common.ids import HostId, VmName
from common.image_messages import ImageCaptured, ImageRef, UploadImage
from common.messages import (
    AttachDisk,
    CaptureVm,
    CreateVm,
    DetachDisk,
    HostInfo,
    HostRef,
    HostReply,
    VmRef,
    VmReply,
)
from common.migration_messages import MigrateVm
from common.network_messages import AddEndpoint, CreateVnet, RemoveEndpoint, VnetRef, VnetReply
from scheduler.core import (
    disks,
    hostnets,
    hostreplicas,
    hosts,
    images,
    migration_flow,
    migrations,
    networks,
    rebalancing,
    rebuilds,
    requests,
    vms,
)
from scheduler.core.context import Carry, StepContext
from scheduler.core.contract import (
    ANSWERED_AT_ONCE,
    BuiltinImage,
    HeartbeatReceived,
    Input,
    InvalidJob,
    Mutation,
    Now,
    Op,
    Reconnected,
    Reply,
    StepResult,
    Tick,
)
from scheduler.core.liveness import fresh_window, renew_windows
from scheduler.core.views import vm_info
from scheduler.placement.hostviews import HostViews
from scheduler.placement.pipeline import PlacementPolicy
from scheduler.state.cluster import ClusterState

_VmBody = (
    CreateVm
    | VmRef
    | AttachDisk
    | DetachDisk
    | CaptureVm
    | AddEndpoint
    | RemoveEndpoint
    | MigrateVm
)
_VmAnswer = tuple[Mutation, VmName | VmReply]
_HostAnswer = tuple[Mutation, HostId | HostReply]


@dataclass(slots=True)
class _Answers:
    """The replies one step owes, built after placement so that they show its outcome."""

    vms: list[_VmAnswer] = field(default_factory=list)
    hosts: list[_HostAnswer] = field(default_factory=list)
    copies: list[tuple[Mutation, str]] = field(default_factory=list)
    """Second copies of a request in this step, by request id: answered with the first's reply."""
    firsts: dict[str, msgspec.Struct] = field(default_factory=dict)
    """This step's replies to requests with an id, by request id."""


class SchedulerCore:
    """The single writer of cluster state."""

    def __init__(
        self,
        config: SchedulerConfig,
        state: ClusterState,
        *,
        scheduler_id: str,
        event_seq: int,
        epoch: int = 0,
    ) -> None:
        self.config = config
        self.state = state
        self.scheduler_id = scheduler_id
        self.epoch = epoch
        """The leadership this core acts for (0: a scheduler without a lease): its acks carry it."""
        self.sizes = config.all_sizes()
        self.policy = PlacementPolicy(scorer=config.scorer)
        self.views = HostViews(config, state)
        self.carry = Carry(event_seq=event_seq)

    @property
    def event_seq(self) -> int:
        return self.carry.event_seq

    def start(self, now: Now, builtin_images: Iterable[BuiltinImage] = ()) -> StepResult:
        """Grant every known host a fresh window (a restart never declares healthy hosts dead)
        and register the built-in images."""
        runtimes = self.state.runtimes  # replaced in place: the shell's read view shares it
        runtimes.clear()
        runtimes.update(fresh_window(self.state.hosts, now.mono_s))
        self.state.stale_views.update(self.state.hosts)  # what hosts hold is learnt anew
        ctx = self.context(now)
        images.register_builtins(ctx, builtin_images)
        return self._result(ctx)

    def host_info(self, host: HostId, now: Now) -> HostInfo:
        return hosts.host_info(self.context(now), host)

    # ------------------------------------------------------------------ the loop's entry point

    def step(self, inputs: list[Input], now: Now) -> StepResult:
        """Handle a batch of inputs; the result's actions are carried out once its records
        are stored."""
        ctx = self.context(now)
        answers = _Answers()
        ticked = False
        for item in inputs:
            match item:  # heartbeats first: at 10,000 hosts they are nearly every input
                case HeartbeatReceived():
                    hosts.heartbeat(ctx, item.heartbeat, item.token, self.scheduler_id, self.epoch)
                case Mutation():
                    if not self._repeated(ctx, item, answers):
                        self._mutation(ctx, item, answers)
                case InvalidJob():
                    ctx.reject_job(item.subject, item.request_id, item.code, item.detail)
                    ctx.reply(item.token, None)
                case Tick():
                    ticked = True
                case Reconnected():
                    # After the scheduler's own NATS outage nobody could be heard, so nobody
                    # is judged on it: every host's window is renewed.
                    renew_windows(self.state.runtimes, self.state.hosts, now.mono_s)
                case _:
                    assert_never(item)
        if ticked:
            hosts.check_liveness(ctx)
            vms.expire_pending(ctx)
            migration_flow.check_timeouts(ctx)
            images.progress_captures(ctx)
        if ticked or self.carry.drains_due:
            hosts.progress_drains(ctx)
        if ticked:
            rebalancing.rebalance(ctx)
            rebuilds.rebuild(ctx)
        vms.place_pending(ctx, everything=ticked and self.carry.capacity_changed)
        hostnets.flush(ctx, peers_too=ticked)
        hostreplicas.flush(ctx)
        self._answer_all(ctx, answers)
        return self._result(ctx)

    def _answer_all(self, ctx: StepContext, answers: _Answers) -> None:
        for mutation, outcome in answers.vms:
            answers.firsts.update(self._answer_vm(ctx, mutation, outcome))
        for mutation, result in answers.hosts:
            answers.firsts.update(self._answer_host(ctx, mutation, result))
        for mutation, request_id in answers.copies:
            self._answer(ctx, mutation, answers.firsts[request_id])

    def _repeated(self, ctx: StepContext, item: Mutation, answers: _Answers) -> bool:
        """Answer a request whose id was seen before (scheduler/core/requests.py): a conflict,
        a retry with a stored reply, or a second copy in this step. True when answered."""
        body = item.body
        if isinstance(body, ImageCaptured) or body.request_id is None:
            return False
        request_id = body.request_id
        request = requests.request_of(item.op, body)
        known = self.state.replies.get(request_id)
        if known is not None and not known.names(request):
            self._answer(ctx, item, requests.conflict(item.op, request_id))
        elif request_id in answers.firsts:
            answers.copies.append((item, request_id))
        elif known is not None and known.reply is not None:
            answers.vms.append((item, known.reply))
            answers.firsts[request_id] = known.reply
        else:
            if known is None:
                self.state.remember_reply(request_id, request)
            answers.firsts[request_id] = _PENDING
            self._mutation(ctx, item, answers)
            if item.op in ANSWERED_AT_ONCE:  # answered at once: its reply is the step's last
                answers.firsts[request_id] = _reply_to(ctx, item.token)
        return True

    def _mutation(self, ctx: StepContext, item: Mutation, answers: _Answers) -> None:
        """Hand a request to its feature; VM and host replies are built after placement, so
        they show its outcome, and gallery replies at once."""
        body = item.body
        match body:
            case (
                CreateVm()
                | VmRef()
                | AttachDisk()
                | DetachDisk()
                | CaptureVm()
                | AddEndpoint()
                | RemoveEndpoint()
                | MigrateVm()
            ):
                answers.vms.append((item, self._vm_op(ctx, item.op, body)))
            case HostRef():
                answers.hosts.append((item, hosts.host_op(ctx, item.op, body)))
            case UploadImage() | ImageRef() | ImageCaptured():
                images.gallery_op(ctx, item.token, body)
            case CreateVnet() | VnetRef():
                self._answer(ctx, item, networks.vnet_op(ctx, body))
            case _:
                assert_never(body)

    def _answer(self, ctx: StepContext, item: Mutation, reply: msgspec.Struct) -> None:
        """Answer ``item`` with a reply made elsewhere (a conflict, a first copy's, or a
        network operation's)."""
        if isinstance(reply, VmReply | HostReply | VnetReply):
            self._reject_failed_job(ctx, item, reply)
        ctx.reply(item.token, reply)

    def _vm_op(self, ctx: StepContext, op: Op, body: _VmBody) -> VmName | VmReply:
        match body:
            case CreateVm():
                return vms.create(ctx, body)
            case VmRef() if op is Op.MIGRATE_CANCEL:
                return migrations.cancel_request(ctx, VmName(body.name))
            case VmRef():
                return vms.change(ctx, op, VmName(body.name))
            case MigrateVm():
                return migrations.request(ctx, body)
            case AttachDisk() | DetachDisk():
                return disks.attach_or_detach(ctx, body)
            case CaptureVm():
                return images.capture(ctx, body)
            case AddEndpoint() | RemoveEndpoint():
                return networks.endpoint_op(ctx, body)
            case _:
                assert_never(body)

    def _answer_vm(
        self, ctx: StepContext, item: Mutation, outcome: VmName | VmReply
    ) -> dict[str, VmReply]:
        """Reply to a VM operation; the reply by request id (if it has one)."""
        request_id = item.body.request_id
        if isinstance(outcome, VmReply):
            reply = outcome
        else:
            reply = VmReply(vm=vm_info(self.state.vms[outcome]))
            request = self.state.replies.get(request_id or "")
            if request_id is not None and request is not None and request.reply is None:
                self.state.remember_reply(request_id, replace(request, reply=reply))
        self._reject_failed_job(ctx, item, reply)
        ctx.reply(item.token, reply)
        return {} if request_id is None else {request_id: reply}

    def _answer_host(
        self, ctx: StepContext, item: Mutation, result: HostId | HostReply
    ) -> dict[str, HostReply]:
        if isinstance(result, HostReply):
            reply = result
        else:
            reply = HostReply(host=hosts.host_info(ctx, result))
        self._reject_failed_job(ctx, item, reply)
        ctx.reply(item.token, reply)
        request_id = item.body.request_id
        return {} if request_id is None else {request_id: reply}

    def _reject_failed_job(
        self, ctx: StepContext, item: Mutation, reply: VmReply | HostReply | VnetReply
    ) -> None:
        if item.via_job and reply.error is not None:
            error = reply.error
            ctx.reject_job(item.job_subject, item.body.request_id, error.code, error.detail)

    # ------------------------------------------------------------------ helpers

    def context(self, now: Now) -> StepContext:
        """A step context on this core's state (``step`` makes one per step)."""
        return StepContext(
            self.state, self.config, self.sizes, self.policy, self.views, now, self.carry
        )

    def _result(self, ctx: StepContext) -> StepResult:
        changes = self.state.take_changes()
        return StepResult(
            ctx.actions,
            changes.vms,
            changes.hosts,
            changes.images,
            changes.replies,
            changes.vnets,
            changes.counters,
        )


_PENDING = msgspec.Struct()
"""Stands for a first copy's reply until the step builds it."""


def _reply_to(ctx: StepContext, token: int) -> msgspec.Struct:
    """The reply this step gave request ``token`` (a gallery operation, answered at once)."""
    body = next(a.body for a in reversed(ctx.actions) if isinstance(a, Reply) and a.token == token)
    assert body is not None
    return body
