"""The host agent's part in live migration (common/migration_messages.py). Pure.

Part of :class:`hostagent.state.AgentState`, which admits every command first (the leader's
epoch, the host id claim, the lease: ``PrepareIncoming``, ``MigrateOut`` and ``FinishIncoming``
arriving without a lease are dropped, like ``StartVm``) and runs one operation per VM at a time.
What this module decides:

- destination: ``PrepareIncoming`` is a start that ends ``incoming`` (AgentState runs it as one:
  an older copy is destroyed first, the VM's networks must be in place); once the driver is
  ready, the VM is reported with status ``ready``, the address and ports. A failure is reported
  like a failed start (``failed``, nothing held) with a ``failed`` report. ``FinishIncoming``
  for an ``incoming`` VM at exactly its generation lets it run; refused, the VM stays
  ``incoming`` with a ``failed`` report (a repeat asks the driver again).
- source: ``MigrateOut`` for a VM running at exactly its generation runs the copy in the
  background (the VM runs on; the report says ``sending``, with the driver's progress), then
  ``handed_over`` and ``sent``, or back to ``running`` with ``failed`` and the reason. A repeat
  for the same attempt, while it runs or after it ended, changes nothing. A VM that is not here
  at that generation, or is not one that could be a source (incoming, handed over, starting),
  is left alone (nothing is reported); one here but paused (fenced) is reported ``failed``, and
  a handed-over one whose report was lost (the agent restarted) is reported ``sent`` again.
  ``CancelMigration`` acts beside the copy it ends, as a fence's pause does.
- fencing: an outgoing migration is cancelled before its VM is paused; an ``incoming`` or
  ``handed_over`` VM does not execute and stays as it is.
- reports: the last ``MigrationReport`` of a VM stays in its inventory entry until the next
  migration command for it replaces it (a successful ``FinishIncoming`` clears it: the attempt
  is over) or the VM leaves this host. Each change of status asks the shell to send the report
  at once (:data:`~hostagent.stimuli.REPORT_NOW`): the switchover waits for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import assert_never

from msgspec.structs import replace

from common.messages import ObservedState, ObservedVm, PrepareIncoming
from common.migration_messages import (
    CancelMigration,
    FinishIncoming,
    MigrateOut,
    MigrationReport,
    MigrationStatus,
)
from hostagent.execlog import ExecEvent
from hostagent.stimuli import (
    REPORT_NOW,
    DriverCancelMigration,
    DriverFinishIncoming,
    DriverMigrateOut,
    DriverPrepareIncoming,
    Instruction,
    Note,
    OpDone,
    Progress,
    RecordExecution,
)
from hostagent.vmcommands import failed, failed_vm

LOOPBACK = "127.0.0.1"
"""Where a host without an underlay address (a one-machine cluster) receives migrations."""
MAX_DETAIL = 128
"""``MigrationReport.detail`` is short text."""


class Migrations:
    """The migration attempts this host takes part in, as source or destination."""

    __slots__ = (
        "_failed",
        "cancelling",
        "host_id",
        "listen_address",
        "outgoing",
        "progress",
        "reports",
    )

    def __init__(self, host_id: str, listen_address: str, failed: dict[str, ObservedVm]) -> None:
        """``failed``: the agent's failed VMs (failed starts), where a failed prepare goes."""
        self.host_id = host_id
        self._failed = failed
        self.listen_address = listen_address or LOOPBACK
        self.reports: dict[str, MigrationReport] = {}
        """The last report of each VM, until the next migration command for it."""
        self.outgoing: dict[str, DriverMigrateOut] = {}
        """The outgoing migrations the driver is carrying out, by VM."""
        self.cancelling: dict[str, str] = {}
        """Outgoing migrations asked to end (by ``CancelMigration`` or the fence), and why."""
        self.progress: dict[str, Progress] = {}
        """The last progress the shell saw of each outgoing migration."""

    # ------------------------------------------------------------------ the report

    def attach(self, vms: list[ObservedVm]) -> list[ObservedVm]:
        """``vms`` with their migration reports."""
        if not self.reports:
            return vms
        return [self._with_report(vm) for vm in vms]

    def _with_report(self, vm: ObservedVm) -> ObservedVm:
        report = self.reports.get(vm.name)
        if report is None:
            return vm
        progress = self.progress.get(vm.name)
        if report.status is MigrationStatus.SENDING and progress is not None:
            report = replace(report, transferred_mib=progress[0], total_mib=progress[1])
        return replace(vm, migration=report)

    def observe(self, progress: Mapping[str, Progress]) -> None:
        """The shell looked at the outgoing migrations' progress (for a heartbeat)."""
        for name, seen in progress.items():
            if name in self.outgoing:
                self.progress[name] = Progress(max(0, seen[0]), max(0, seen[1]))

    def forget(self, name: str) -> None:
        """The VM left this host: its report goes with it."""
        self.reports.pop(name, None)
        self.progress.pop(name, None)

    def _report(self, name: str, report: MigrationReport, out: list[Instruction]) -> None:
        """The VM's side of an attempt has a new status: reported at once."""
        self.reports[name] = report
        out.append(REPORT_NOW)

    def _fail(
        self, name: str, attempt: int, peer: str, detail: str, out: list[Instruction]
    ) -> None:
        failed = MigrationStatus.FAILED
        detail = detail[:MAX_DETAIL] or "failed"
        self._report(
            name, MigrationReport(attempt=attempt, peer=peer, status=failed, detail=detail), out
        )

    # ------------------------------------------------------------------ destination

    def prepare(self, command: PrepareIncoming) -> DriverPrepareIncoming:
        """The driver call that gets ``command``'s VM ready (the caller checked the lease, the
        networks and that no other copy is held)."""
        self.forget(command.vm.name)
        return DriverPrepareIncoming(
            command.vm, command.generation, self.listen_address, command.source
        )

    def prepare_again(self, command: PrepareIncoming, held: ObservedVm) -> bool:
        """A repeated ``PrepareIncoming`` for the generation held: True if the driver must be
        asked again (an ``incoming`` VM whose report was lost with a restarted agent: the driver
        returns the same endpoint); otherwise the report stands as it is."""
        return held.state is ObservedState.INCOMING and command.vm.name not in self.reports

    def done(
        self,
        op: DriverPrepareIncoming | DriverMigrateOut | DriverFinishIncoming,
        done: OpDone,
        out: list[Instruction],
    ) -> bool:
        """The driver's answer to ``op``; True when the VM runs from now on."""
        match op:
            case DriverPrepareIncoming():
                self._prepared(op, done, out)
            case DriverMigrateOut():
                self._migrated(op, done.error, out)
            case DriverFinishIncoming():
                return self._finished(op, done.error, out)
            case _:
                assert_never(op)
        return False

    def _prepared(self, op: DriverPrepareIncoming, done: OpDone, out: list[Instruction]) -> None:
        """Ready: reported with the endpoint. Failed: reported as a failed start (it holds
        nothing here) until the scheduler clears it."""
        name, generation = op.name, op.generation
        if done.error is None and done.endpoint is not None:
            address, migration_port, nbd_port = done.endpoint
            ready = MigrationReport(
                attempt=generation,
                peer=op.source,
                status=MigrationStatus.READY,
                address=address,
                migration_port=migration_port,
                nbd_port=nbd_port,
            )
            self._report(name, ready, out)
            out.append(RecordExecution(name, generation, ExecEvent.INCOMING))
            out.append(
                Note.info(
                    "vm incoming vm=%s generation=%d source=%s address=%s migration_port=%d",
                    name,
                    generation,
                    op.source,
                    address,
                    migration_port,
                )
            )
            return
        error = done.error or "the driver returned no endpoint"
        self._fail(name, generation, op.source, error, out)
        out.append(failed("incoming", name, generation, error))
        self._failed[name] = failed_vm(op.spec, generation, error, done.retryable)

    def finish(
        self, command: FinishIncoming, held: ObservedVm | None, leased: bool, out: list[Instruction]
    ) -> bool:
        """Decide ``FinishIncoming``; True when it waits for the driver."""
        name, generation = command.name, command.generation
        if (
            held is None
            or held.generation != generation
            or held.state is not ObservedState.INCOMING
        ):
            out.append(
                Note.debug("finish ignored vm=%s generation=%d held=%s", name, generation, held)
            )
            return False
        if not leased:
            out.append(
                Note.info("finish refused without a lease vm=%s generation=%d", name, generation)
            )
            return False
        out.append(RecordExecution(name, generation, ExecEvent.RESUME))  # it may run from now on
        out.append(DriverFinishIncoming(name, generation))
        return True

    def _finished(
        self, op: DriverFinishIncoming, error: str | None, out: list[Instruction]
    ) -> bool:
        """The driver's answer to ``op``; True when the VM runs now."""
        name, generation = op.name, op.generation
        if error is None:
            self.reports.pop(name, None)  # the attempt is over: the VM is the VM now
            out.append(REPORT_NOW)
            out.append(
                Note.info("vm running after migration vm=%s generation=%d", name, generation)
            )
            return True
        previous = self.reports.get(name)
        peer = previous.peer if previous is not None else self.host_id
        self._fail(name, generation, peer, error, out)
        out.append(RecordExecution(name, generation, ExecEvent.PAUSE))
        out.append(
            Note.warning("finish refused vm=%s generation=%d error=%s", name, generation, error)
        )
        return False

    # ------------------------------------------------------------------ source

    def migrate_out(
        self, command: MigrateOut, held: ObservedVm | None, leased: bool, out: list[Instruction]
    ) -> bool:
        """Decide ``MigrateOut``; True when it waits for the driver (the whole copy)."""
        name, attempt, target = command.name, command.target_generation, command.target
        if held is None or held.generation != command.generation:
            out.append(
                Note.info(
                    "migrate out ignored, vm not here vm=%s generation=%d held=%s",
                    name,
                    command.generation,
                    held,
                )
            )
            return False
        report = self.reports.get(name)
        if report is not None and report.attempt == attempt:
            out.append(
                Note.debug(
                    "migrate out repeated vm=%s attempt=%d status=%s", name, attempt, report.status
                )
            )
            return False
        if held.state is ObservedState.PAUSED:  # fenced: it may not leave before it runs
            self._fail(name, attempt, target, "vm is paused, not running", out)
            return False
        if held.state is ObservedState.HANDED_OVER and report is None:
            # Handed over, its report lost with a restarted agent: only a MigrateOut hands a
            # VM over, and the destination refuses to run a VM whose state never came.
            sent = MigrationReport(attempt=attempt, peer=target, status=MigrationStatus.SENT)
            self._report(name, sent, out)
            return False
        if held.state is not ObservedState.RUNNING:  # incoming, starting: not a source
            out.append(Note.info("migrate out ignored vm=%s state=%s", name, held.state))
            return False
        if not leased:
            out.append(
                Note.info("migrate out refused without a lease vm=%s attempt=%d", name, attempt)
            )
            return False
        op = DriverMigrateOut(command)
        self.outgoing[name] = op
        self.progress.pop(name, None)
        sending = MigrationReport(attempt=attempt, peer=target, status=MigrationStatus.SENDING)
        self._report(name, sending, out)
        out.append(
            Note.info(
                "vm migrating out vm=%s generation=%d target=%s attempt=%d",
                name,
                command.generation,
                target,
                attempt,
            )
        )
        out.append(op)
        return True

    def _migrated(self, op: DriverMigrateOut, error: str | None, out: list[Instruction]) -> None:
        """The driver's answer to ``op``: handed over, or the VM runs on here."""
        command = op.command
        name, attempt, target = command.name, command.target_generation, command.target
        del self.outgoing[name]
        why = self.cancelling.pop(name, None)
        progress = self.progress.pop(name, None)
        if error is None:
            total_mib = max(progress) if progress is not None else 0
            sent = MigrationReport(
                attempt=attempt,
                peer=target,
                status=MigrationStatus.SENT,
                transferred_mib=total_mib,
                total_mib=total_mib,
            )
            self._report(name, sent, out)
            out.append(RecordExecution(name, command.generation, ExecEvent.PAUSE))  # for good
            out.append(
                Note.info(
                    "vm handed over vm=%s generation=%d target=%s attempt=%d",
                    name,
                    command.generation,
                    target,
                    attempt,
                )
            )
            return
        self._fail(name, attempt, target, error if why is None else f"{why}: {error}", out)
        out.append(
            Note.warning("vm migration failed vm=%s attempt=%d error=%s", name, attempt, error)
        )

    def cancel(self, command: CancelMigration, out: list[Instruction]) -> None:
        """``CancelMigration``: end the outgoing migration it names, if it runs."""
        name = command.name
        op = self.outgoing.get(name)
        if op is None or (op.generation, op.command.target_generation) != (
            command.generation,
            command.target_generation,
        ):
            out.append(
                Note.debug(
                    "cancel ignored, no such migration vm=%s attempt=%d",
                    name,
                    command.target_generation,
                )
            )
            return
        self._cancel(op, "cancelled by the scheduler", out)

    def fence(self, out: list[Instruction]) -> None:
        """The lease ran out: every outgoing migration ends (its VM is then paused)."""
        for op in list(self.outgoing.values()):
            self._cancel(op, "cancelled, lease lost", out)

    def _cancel(self, op: DriverMigrateOut, why: str, out: list[Instruction]) -> None:
        if op.name in self.cancelling:
            return
        self.cancelling[op.name] = why
        attempt = op.command.target_generation
        out.append(Note.info("vm migration %s vm=%s attempt=%d", why, op.name, attempt))
        out.append(DriverCancelMigration(op.name, op.generation, attempt))

    def cancel_done(
        self, op: DriverCancelMigration, error: str | None, out: list[Instruction]
    ) -> None:
        if error is not None:
            out.append(
                Note.error(
                    "vm migration cancel failed vm=%s attempt=%d error=%s",
                    op.name,
                    op.attempt,
                    error,
                )
            )
