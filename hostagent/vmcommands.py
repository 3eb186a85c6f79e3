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
from common.replica_messages import SetDiskReplicas
from hostagent.execlog import ExecEvent
from hostagent.stimuli import (
    DriverResume,
    DriverSetReplicas,
    Instruction,
    Note,
    RecordExecution,
)

VmCommand = (
    StartVm
    | StopVm
    | DeleteVm
    | ResumeVm
    | CaptureDisk
    | PrepareIncoming
    | MigrateOut
    | FinishIncoming
    | SetDiskReplicas
)
"""The commands about one VM that are queued (``ConfigureNetworks`` is about the host, and
``CancelMigration`` acts beside the migration it ends)."""

VmAnyCommand = VmCommand | CancelMigration

NEEDS_LEASE = StartVm | ResumeVm | PrepareIncoming | MigrateOut | FinishIncoming | SetDiskReplicas
"""Commands that may let a VM execute (or hand it to a host that will; a VM stopped by a failed
copy goes on once it is dropped): dropped without a lease."""

NOT_HERE = "remove of vm not running here vm=%s generation=%d"


def command_vm_name(command: VmAnyCommand) -> str:
    return command.vm.name if isinstance(command, StartVm | PrepareIncoming) else command.name


def vg(vm: ObservedVm) -> tuple[str, int]:
    return vm.name, vm.generation


def stale(verb: str, name: str, generation: int, held: ObservedVm) -> Note:
    event = "stale %s ignored vm=%s generation=%d held_generation=%d"
    return Note.info(event, verb, name, generation, held.generation)


class Inventory(list[ObservedVm]):
    """An inventory that knows where each VM is in it: a driver that keeps its inventory as it
    goes (the fake) hands out one of these, and :func:`find` looks a VM up in it without a scan.
    Like every inventory handed out, it is not changed afterwards."""

    __slots__ = ("by_name",)

    def __init__(self, by_name: dict[str, ObservedVm]) -> None:
        """``by_name``: the VMs by name, given to the inventory to keep (not changed after)."""
        super().__init__(by_name.values())
        self.by_name = by_name


def find(vms: Sequence[ObservedVm], name: str) -> ObservedVm | None:
    if isinstance(vms, Inventory):
        return vms.by_name.get(name)
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


_HAS_DISKS = (ObservedState.RUNNING, ObservedState.STARTING, ObservedState.PAUSED)


def set_replicas(
    command: SetDiskReplicas, held: ObservedVm | None, leased: bool, out: list[Instruction]
) -> bool:
    """Decide ``SetDiskReplicas``: only for the VM held at exactly its generation (a newer or
    older copy of the VM has copy sets of its own), and with a lease (dropping a failed copy lets
    the VM go on); True when it waits for the driver."""
    name, generation = command.name, command.generation
    if held is None or held.generation != generation or held.state not in _HAS_DISKS:
        out.append(
            Note.info(
                "disk replicas ignored vm=%s generation=%d disk_id=%s held=%s",
                name,
                generation,
                command.disk_id,
                None if held is None else (held.generation, held.state),
            )
        )
        return False
    if not leased:
        out.append(Note.info("disk replicas refused without a lease vm=%s", name))
        return False
    out.append(
        Note.info(
            "disk replicas vm=%s generation=%d disk_id=%s replicas=%s joining=%s",
            name,
            generation,
            command.disk_id,
            [ref.host for ref in command.replicas],
            [ref.host for ref in command.joining],
        )
    )
    out.append(DriverSetReplicas(command))
    return True
