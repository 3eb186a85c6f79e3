"""Playing the hosts of a live migration for the pure core: what each side reports."""

from __future__ import annotations

from common.ids import HostId
from common.messages import (
    DeleteVm,
    ObservedState,
    ObservedVm,
    PrepareIncoming,
    ResumeVm,
    StartVm,
    StopVm,
    VmReply,
)
from common.migration_messages import (
    CancelMigration,
    FinishIncoming,
    MigrateOut,
    MigrateVm,
    MigrationReport,
    MigrationStatus,
)
from scheduler.core.contract import Action, Op, SendCommands
from tests.unit.scheduler.corekit import CoreKit

UNDERLAY = {"h1": "192.0.2.1", "h2": "192.0.2.2", "h3": "192.0.2.3"}


def cluster(*hosts: str, **config: object) -> CoreKit:
    kit = CoreKit(**config)
    for i, host in enumerate(hosts):
        kit.heartbeat(host, fault_domain=f"fd-{i}", underlay_ip=UNDERLAY.get(host, ""))
    return kit


def beat(kit: CoreKit, host: str, vms: list[ObservedVm]) -> None:
    kit.heartbeat(host, vms, fault_domain=f"fd-{host[-1]}", underlay_ip=UNDERLAY.get(host, ""))


def running_vm(kit: CoreKit, name: str, host: str) -> None:
    """Create ``name`` on ``host`` (the other hosts cordoned meanwhile), running there."""
    others = [h for h in kit.state.hosts if h != host]
    for other in others:
        kit.host_op(Op.CORDON, other)
    kit.create(name)
    for other in others:
        kit.host_op(Op.UNCORDON, other)
    beat(kit, host, kit.running_on(host))
    assert kit.vm(name).host == host


def migrate(kit: CoreKit, name: str, to: str | None = None) -> VmReply:
    reply = kit.ask(Op.MIGRATE, MigrateVm(name=name, to=to))
    assert isinstance(reply, VmReply)
    return reply


def vm_at(
    name: str,
    generation: int,
    state: ObservedState,
    report: MigrationReport | None = None,
    reason: str = "",
) -> ObservedVm:
    return ObservedVm(
        name=name,
        generation=generation,
        state=state,
        cpu_milli=1000,
        mem_mib=1792,
        migration=report,
        reason=reason,
    )


def incoming(name: str, attempt: int, source: str, status: MigrationStatus) -> ObservedVm:
    """The destination's copy: paused, waiting (``ready``) or ``failed``."""
    report = MigrationReport(
        attempt=attempt,
        peer=source,
        status=status,
        address="192.0.2.2",
        migration_port=4444,
        nbd_port=10809,
        detail="no room for the disks" if status is MigrationStatus.FAILED else "",
    )
    return vm_at(name, attempt, ObservedState.INCOMING, report)


def sending(
    name: str, generation: int, attempt: int, target: str, done_mib: int, total_mib: int = 100
) -> ObservedVm:
    """The source's copy while it sends (it runs on)."""
    report = MigrationReport(
        attempt=attempt,
        peer=target,
        status=MigrationStatus.SENDING,
        transferred_mib=done_mib,
        total_mib=total_mib,
    )
    return vm_at(name, generation, ObservedState.RUNNING, report)


def source_failed(name: str, generation: int, attempt: int, target: str) -> ObservedVm:
    report = MigrationReport(
        attempt=attempt, peer=target, status=MigrationStatus.FAILED, detail="connection reset"
    )
    return vm_at(name, generation, ObservedState.RUNNING, report)


def handed_over(name: str, generation: int, attempt: int, target: str) -> ObservedVm:
    report = MigrationReport(attempt=attempt, peer=target, status=MigrationStatus.SENT)
    return vm_at(name, generation, ObservedState.HANDED_OVER, report)


class Hosts:
    """A minimal model of agents that carry out every command at once, migrations included
    (a migration is handed over as soon as it is asked for): enough to drive drains. The
    agents' own pure core learns migrations separately; this is not it."""

    def __init__(self, kit: CoreKit, *hosts: str) -> None:
        self.kit = kit
        self.vms: dict[str, dict[str, ObservedVm]] = {h: {} for h in hosts}
        self.refuse_out: set[str] = set()
        """VMs whose source fails every ``MigrateOut``."""

    def adopt(self) -> None:
        """Take what the records say runs as each host's inventory."""
        for host in self.vms:
            self.vms[host] = {vm.name: vm for vm in self.kit.running_on(host)}

    def carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendCommands) and action.host_id in self.vms:
                for command in action.commands:
                    self._do(action.host_id, command)

    def _do(self, host: str, command: object) -> None:
        vms = self.vms[host]
        match command:
            case StartVm(vm=spec, generation=gen) | ResumeVm(name=spec, generation=gen):
                name = spec if isinstance(spec, str) else spec.name
                vms[name] = vm_at(name, gen, ObservedState.RUNNING)
            case StopVm(name=name, generation=gen) | DeleteVm(name=name, generation=gen):
                if name in vms and vms[name].generation <= gen:
                    del vms[name]
            case PrepareIncoming(vm=spec, generation=gen, source=source):
                vms[spec.name] = incoming(spec.name, gen, source, MigrationStatus.READY)
            case MigrateOut(name=name, generation=gen, target=target, target_generation=t):
                if name in vms and vms[name].generation == gen:
                    if name in self.refuse_out:
                        vms[name] = source_failed(name, gen, t, target)
                    else:
                        vms[name] = handed_over(name, gen, t, target)
            case CancelMigration(name=name, generation=gen, target_generation=t):
                seen = vms.get(name)
                if seen is not None and seen.state is ObservedState.RUNNING:
                    vms[name] = source_failed(name, gen, t, "?")
            case FinishIncoming(name=name, generation=gen):
                if name in vms and vms[name].generation == gen:
                    vms[name] = vm_at(name, gen, ObservedState.RUNNING)
            case _:
                pass

    def beat_all(self) -> None:
        for host in self.vms:
            if self.kit.state.hosts[HostId(host)].up:
                self.carry_out(
                    self.kit.heartbeat(
                        host,
                        list(self.vms[host].values()),
                        fault_domain=f"fd-{host[-1]}",
                        underlay_ip=UNDERLAY.get(host, ""),
                    )
                )

    def rounds(self, count: int, dt: float = 0.5) -> None:
        for _ in range(count):
            self.beat_all()
            self.carry_out(self.kit.advance(dt))
