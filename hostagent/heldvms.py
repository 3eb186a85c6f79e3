"""The VMs this host holds, one copy each: a start (an older copy destroyed first, the VM's
networks in place, a lease held), a stop or a delete (ignored when stale), what the driver's
answers mean for them, and the starts that failed, kept in the inventory until the scheduler
clears them with a start, stop or delete. Pure (part of :class:`hostagent.state.AgentState`,
which admits each command first and runs one driver operation per VM at a time)."""

from __future__ import annotations

from collections.abc import Sequence

from common.messages import DeleteVm, ObservedState, ObservedVm, PrepareIncoming, StartVm, StopVm
from hostagent.execlog import ExecEvent
from hostagent.migration import Migrations
from hostagent.netgate import NetworkGate
from hostagent.stimuli import (
    REPORT_CHANGED,
    DriverDestroy,
    DriverForget,
    DriverStart,
    DriverStop,
    Instruction,
    Note,
    OpDone,
    RecordExecution,
)
from hostagent.vmcommands import NOT_HERE, VmCommand, failed, failed_vm, find, stale, vg


class HeldVms:
    """Starts, stops and deletes of the VMs held here; the failed starts kept meanwhile."""

    __slots__ = ("failed", "mig", "net")

    def __init__(self, net: NetworkGate, mig: Migrations, failed: dict[str, ObservedVm]) -> None:
        """``failed``: the failed starts by VM name, shared with ``mig`` (a failed prepare of
        an incoming VM is one)."""
        self.net = net
        self.mig = mig
        self.failed = failed

    def find(self, name: str, vms: Sequence[ObservedVm]) -> ObservedVm | None:
        """The copy of ``name`` held here: a failed start, else the driver's (in ``vms``)."""
        failed = self.failed.get(name)
        return failed if failed is not None else find(vms, name)

    def start(
        self,
        command: StartVm | PrepareIncoming,
        vms: Sequence[ObservedVm],
        leased: bool,
        out: list[Instruction],
    ) -> bool:
        """A start, or a start that ends incoming (the destination of a migration); True when
        it waits for the driver."""
        spec, generation = command.vm, command.generation
        held = self.find(spec.name, vms)
        if held is not None:
            if held.generation == generation:
                if isinstance(command, PrepareIncoming) and self.mig.prepare_again(command, held):
                    return self.launch(command, leased, out)
                out.append(Note.debug("start ignored, already held vm=%s generation=%d", *vg(held)))
                return False
            if held.generation > generation:
                out.append(stale("start", spec.name, generation, held))
                return False
            if spec.name not in self.failed:  # destroy the older copy, then launch
                out.append(DriverDestroy(spec.name, held.generation))
                return True
            self._clear_failed(held, out)
        return self.launch(command, leased, out)

    def launch(
        self, command: StartVm | PrepareIncoming, leased: bool, out: list[Instruction]
    ) -> bool:
        """Start ``command``'s VM now that no other copy is held; True when it waits for the
        driver (or for the networks being applied)."""
        spec, generation = command.vm, command.generation
        name = spec.name
        if not leased:
            # A start delivered late (after a partition) may already run elsewhere: without a
            # lease nothing starts, not even for a moment; the scheduler resends it if still due.
            out.append(
                Note.info("start refused without a lease vm=%s generation=%d", name, generation)
            )
            return False
        networks = self.net.may_start(spec, out)  # never a VM whose bridge is missing
        if networks is not True:
            return networks is None  # None: waits for the networks being applied
        if isinstance(command, PrepareIncoming):
            out.append(self.mig.prepare(command))
            return True
        out.append(
            Note.info("vm starting vm=%s generation=%d size=%s", name, generation, spec.size)
        )
        out.append(RecordExecution(name, generation, ExecEvent.START))
        out.append(DriverStart(spec, generation))
        return True

    def remove(
        self, command: StopVm | DeleteVm, vms: Sequence[ObservedVm], out: list[Instruction]
    ) -> bool:
        """A stop or a delete; True when it waits for the driver."""
        name, generation = command.name, command.generation
        destroy = isinstance(command, DeleteVm)
        held = self.find(name, vms)
        if held is None:
            if destroy:  # a deleted VM not running here may still have disks here
                out.append(DriverForget(name, generation))
                return True
            out.append(Note.debug(NOT_HERE, name, generation))
            return False
        if held.generation > generation:
            out.append(stale("delete" if destroy else "stop", name, generation, held))
            return False
        if name in self.failed:
            self._clear_failed(held, out)
            return False
        out.append((DriverDestroy if destroy else DriverStop)(name, held.generation))
        return True

    def _clear_failed(self, held: ObservedVm, out: list[Instruction]) -> None:
        del self.failed[held.name]
        self.mig.forget(held.name)
        out.append(REPORT_CHANGED)
        out.append(Note.info("failed vm cleared vm=%s generation=%d", held.name, held.generation))

    # ------------------------------------------------------------------ driver results

    def started(self, op: DriverStart, done: OpDone, out: list[Instruction]) -> bool:
        """Take in a start's result; True when the VM runs (the caller fences it at once if it
        started without a lease)."""
        name, generation = op.name, op.generation
        if done.error is not None:
            self.failed[name] = failed_vm(op.spec, generation, done.error, done.retryable)
            out.append(RecordExecution(name, generation, ExecEvent.FAIL))
            out.append(failed("start", name, generation, done.error))
            return False
        held = find(done.vms, name)
        if held is not None and held.state is ObservedState.RUNNING:
            out.append(RecordExecution(name, generation, ExecEvent.RUNNING))
            out.append(Note.info("vm running vm=%s generation=%d", name, generation))
            return True
        out.append(REPORT_CHANGED)
        out.append(Note.info("vm started paused vm=%s generation=%d", name, generation))
        return False

    def removed(
        self,
        op: DriverStop | DriverDestroy,
        error: str | None,
        head: VmCommand,
        leased: bool,
        out: list[Instruction],
    ) -> bool:
        """Take in a stop's or destroy's result; ``head`` is the command it was for. True when
        that command goes on (a start whose older copy is gone: launched anew)."""
        destroy = isinstance(op, DriverDestroy)
        if error is not None:
            out.append(failed("destroy" if destroy else "stop", op.name, op.generation, error))
            return False
        event, done = (ExecEvent.DESTROY, "destroyed") if destroy else (ExecEvent.STOP, "stopped")
        out.append(RecordExecution(op.name, op.generation, event))
        out.append(Note.info("vm %s vm=%s generation=%d", done, op.name, op.generation))
        self.mig.forget(op.name)
        if isinstance(head, StartVm | PrepareIncoming):  # the older copy is gone: launch anew
            return self.launch(head, leased, out)
        return False
