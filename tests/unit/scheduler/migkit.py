"""Playing the hosts of a live migration for the pure core: what each side reports."""

from __future__ import annotations

from common.messages import ObservedState, ObservedVm, VmReply
from common.migration_messages import MigrateVm, MigrationReport, MigrationStatus
from scheduler.core.contract import Op
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
