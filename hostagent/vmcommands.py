"""Commands about one VM, and the small helpers the agent's core judges them with. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from common.messages import CaptureDisk, DeleteVm, ObservedVm, ResumeVm, StartVm, StopVm
from hostagent.stimuli import Note

VmCommand = StartVm | StopVm | DeleteVm | ResumeVm | CaptureDisk
"""The commands about one VM (``ConfigureNetworks`` is about the host)."""

NOT_HERE = "remove of vm not running here vm=%s generation=%d"


def command_vm_name(command: VmCommand) -> str:
    return command.vm.name if isinstance(command, StartVm) else command.name


def vg(vm: ObservedVm) -> tuple[str, int]:
    return vm.name, vm.generation


def stale(verb: str, name: str, generation: int, held: ObservedVm) -> Note:
    event = "stale %s ignored vm=%s generation=%d held_generation=%d"
    return Note.info(event, verb, name, generation, held.generation)


def find(vms: Sequence[ObservedVm], name: str) -> ObservedVm | None:
    return next((vm for vm in vms if vm.name == name), None)
