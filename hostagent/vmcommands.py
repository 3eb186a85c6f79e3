"""Commands about one VM, and the small helpers the agent's core judges them with. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from common.messages import (
    CaptureDisk,
    DeleteVm,
    ObservedState,
    ObservedVm,
    PrepareIncoming,
    ResumeVm,
    StartVm,
    StopVm,
    VmSpec,
)
from common.migration_messages import CancelMigration, FinishIncoming, MigrateOut
from hostagent.execlog import ExecEvent
from hostagent.stimuli import DriverResume, Instruction, Note, RecordExecution

VmCommand = (
    StartVm
    | StopVm
    | DeleteVm
    | ResumeVm
    | CaptureDisk
    | PrepareIncoming
    | MigrateOut
    | FinishIncoming
)
"""The commands about one VM that are queued (``ConfigureNetworks`` is about the host, and
``CancelMigration`` acts beside the migration it ends)."""

VmAnyCommand = VmCommand | CancelMigration

NEEDS_LEASE = StartVm | ResumeVm | PrepareIncoming | MigrateOut | FinishIncoming
"""Commands that may let a VM execute (or hand it to a host that will): dropped without a
lease."""

NOT_HERE = "remove of vm not running here vm=%s generation=%d"


def command_vm_name(command: VmAnyCommand) -> str:
    return command.vm.name if isinstance(command, StartVm | PrepareIncoming) else command.name


def vg(vm: ObservedVm) -> tuple[str, int]:
    return vm.name, vm.generation


def stale(verb: str, name: str, generation: int, held: ObservedVm) -> Note:
    event = "stale %s ignored vm=%s generation=%d held_generation=%d"
    return Note.info(event, verb, name, generation, held.generation)


def find(vms: Sequence[ObservedVm], name: str) -> ObservedVm | None:
    return next((vm for vm in vms if vm.name == name), None)


def failed(verb: str, name: str, generation: int, error: str) -> Note:
    return Note.error("vm %s failed vm=%s generation=%d error=%s", verb, name, generation, error)


def failed_vm(spec: VmSpec, generation: int, error: str, retryable: bool) -> ObservedVm:
    """A VM that could not be started (or prepared) here: reported, holding nothing, until the
    scheduler clears it."""
    return ObservedVm(
        name=spec.name,
        generation=generation,
        state=ObservedState.FAILED,
        cpu_milli=spec.cpu_milli,
        mem_mib=spec.mem_mib,
        reason=error,
        retryable=retryable,
    )


def resume(
    command: ResumeVm, held: ObservedVm | None, leased: bool, out: list[Instruction]
) -> bool:
    """Decide ``ResumeVm``: a fenced VM at exactly its generation runs again (with a lease);
    True when it waits for the driver."""
    name, generation = command.name, command.generation
    if held is None or held.generation != generation or held.state is not ObservedState.PAUSED:
        out.append(Note.debug("resume ignored vm=%s generation=%d held=%s", name, generation, held))
        return False
    if not leased:
        out.append(
            Note.info("resume refused without a lease vm=%s generation=%d", name, generation)
        )
        return False
    out.append(RecordExecution(name, generation, ExecEvent.RESUME))
    out.append(DriverResume(name, generation))
    return True
