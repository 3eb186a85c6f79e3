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
from typing import assert_never

from common.config import SchedulerConfig
from common.ids import HostId, VmName
from common.messages import (
    AttachDisk,
    CaptureVm,
    CreateVm,
    DetachDisk,
    HostInfo,
    HostRef,
    HostReply,
    ImageCaptured,
    ImageRef,
    UploadImage,
    VmRef,
    VmReply,
)
from scheduler.core import disks, hosts, images, vms
from scheduler.core.context import Carry, StepContext
from scheduler.core.contract import (
    BuiltinImage,
    HeartbeatReceived,
    Input,
    InvalidJob,
    Mutation,
    Now,
    Op,
    Reconnected,
    StepResult,
    Tick,
)
from scheduler.core.liveness import fresh_window, renew_windows
from scheduler.core.views import vm_info
from scheduler.placement.hostviews import HostViews
from scheduler.placement.pipeline import PlacementPolicy
from scheduler.state.cluster import ClusterState

_VmBody = CreateVm | VmRef | AttachDisk | DetachDisk | CaptureVm
_VmAnswer = tuple[Mutation, VmName | VmReply]
_HostAnswer = tuple[Mutation, HostId | HostReply]


class SchedulerCore:
    """The single writer of cluster state."""

    def __init__(
        self, config: SchedulerConfig, state: ClusterState, *, scheduler_id: str, event_seq: int
    ) -> None:
        self.config = config
        self.state = state
        self.scheduler_id = scheduler_id
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
        vm_answers: list[_VmAnswer] = []
        host_answers: list[_HostAnswer] = []
        ticked = False
        for item in inputs:
            match item:
                case Mutation():
                    self._mutation(ctx, item, vm_answers, host_answers)
                case InvalidJob():
                    ctx.reject_job(item.subject, item.request_id, item.code, item.detail)
                    ctx.reply(item.token, None)
                case HeartbeatReceived():
                    hosts.heartbeat(ctx, item.heartbeat, item.token, self.scheduler_id)
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
            images.progress_captures(ctx)
        if ticked or self.carry.drains_due:
            hosts.progress_drains(ctx)
        vms.place_pending(ctx, everything=ticked and self.carry.capacity_changed)
        for mutation, outcome in vm_answers:
            self._answer_vm(ctx, mutation, outcome)
        for mutation, result in host_answers:
            self._answer_host(ctx, mutation, result)
        return self._result(ctx)

    def _mutation(
        self,
        ctx: StepContext,
        item: Mutation,
        vm_answers: list[_VmAnswer],
        host_answers: list[_HostAnswer],
    ) -> None:
        """Hand a request to its feature; VM and host replies are built after placement, so
        they show its outcome, and gallery replies at once."""
        body = item.body
        match body:
            case CreateVm() | VmRef() | AttachDisk() | DetachDisk() | CaptureVm():
                cached = self.state.replies.get(body.request_id or "")
                vm_answers.append((item, cached or self._vm_op(ctx, item.op, body)))
            case HostRef():
                host_answers.append((item, hosts.host_op(ctx, item.op, body)))
            case UploadImage() | ImageRef() | ImageCaptured():
                images.gallery_op(ctx, item.token, body)
            case _:
                assert_never(body)

    def _vm_op(self, ctx: StepContext, op: Op, body: _VmBody) -> VmName | VmReply:
        match body:
            case CreateVm():
                return vms.create(ctx, body)
            case VmRef():
                return vms.change(ctx, op, VmName(body.name))
            case AttachDisk() | DetachDisk():
                return disks.attach_or_detach(ctx, body)
            case CaptureVm():
                return images.capture(ctx, body)
            case _:
                assert_never(body)

    def _answer_vm(self, ctx: StepContext, item: Mutation, outcome: VmName | VmReply) -> None:
        if isinstance(outcome, VmReply):
            reply = outcome
        else:
            reply = VmReply(vm=vm_info(self.state.vms[outcome]))
            if item.body.request_id is not None:
                self.state.remember_reply(item.body.request_id, reply)
        self._reject_failed_job(ctx, item, reply)
        ctx.reply(item.token, reply)

    def _answer_host(self, ctx: StepContext, item: Mutation, result: HostId | HostReply) -> None:
        if isinstance(result, HostReply):
            reply = result
        else:
            reply = HostReply(host=hosts.host_info(ctx, result))
        self._reject_failed_job(ctx, item, reply)
        ctx.reply(item.token, reply)

    def _reject_failed_job(
        self, ctx: StepContext, item: Mutation, reply: VmReply | HostReply
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
        vms_, hosts_, images_, replies = self.state.take_changes()
        return StepResult(ctx.actions, vms_, hosts_, images_, replies)
