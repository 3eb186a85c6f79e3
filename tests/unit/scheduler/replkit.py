"""A harness for replicated disks in the pure core: ``CoreKit`` with hosts that serve replicas
as well-behaved agents would, kept as plain data:

- each host applies the last set it was sent (``ConfigureReplicas``, with the
  ``UpdateReplicas`` based on it merged in) when it next reports (or keeps a replica
  "creating" while the test holds it back), and echoes the digest;
- each VM a host was told to start runs, and reports each replicated disk with the copies of
  its spec in sync; ``SetDiskReplicas`` changes that set (joining copies stay joining until
  ``join`` brings them in step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.ids import HostId, VmName
from common.messages import DeleteVm, ObservedState, ObservedVm, StartVm, StopVm
from common.replica_messages import (
    ConfigureReplicas,
    DiskReplicas,
    ReplicaState,
    ReplicaStatus,
    SetDiskReplicas,
    UpdateReplicas,
)
from common.replicaset import ReplicaSet
from hostagent.report import InventoryReport
from scheduler.core.contract import Action, Input, SendCommands
from scheduler.state.storage import CopyState
from tests.unit.scheduler.corekit import CoreKit

PORT = 10809


@dataclass
class DiskView:
    """A replicated disk as its VM's host sees it."""

    in_sync: list[str]
    joining: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class ReplicaKit(CoreKit):
    def __init__(self, replicas: int = 2, **config: object) -> None:
        storage = dict(config.pop("storage", {}))  # type: ignore[call-overload]
        storage.setdefault("replicas", replicas)
        super().__init__(storage=storage, **config)
        self.domains: dict[str, str] = {}
        self.capacity_mib: dict[str, int] = {}
        self.sent_sets: dict[str, ConfigureReplicas] = {}
        """Per host, the set it was sent, whole or as updates merged into it."""
        self.ignored = 0
        """Updates a host did not hold the base of."""
        self.applied: dict[str, ConfigureReplicas] = {}
        self.held_back: dict[str, set[str]] = {}
        """Per host, replicas it keeps creating (not ready) until released, if it makes them."""
        self.disks: dict[tuple[VmName, str], DiskView] = {}
        self.commands_seen: list[tuple[str, object]] = []
        self.started: dict[str, dict[VmName, StartVm]] = {}
        """Per host, the VMs it runs (the StartVm it got)."""
        self.violations: list[str] = []
        """Copies a VM was told to write to that lacked acknowledged writes (never any)."""
        self.gone: dict[str, str] = {}
        self.made: dict[str, set[str]] = {}
        """Per host, the replicas it made (reported ready once): never "creating" again."""
        self.new: dict[str, set[str]] = {}
        """Per host, replicas made in this report: reported creating in it."""
        self.boots: dict[str, int] = {}
        self.lost: dict[str, set[str]] = {}
        self.filling: dict[str, dict[str, str]] = {}
        self.fill_progress: dict[str, float] = {}
        """Per host, how far it reports its copies being filled."""
        """Per host, the copies it fills, from which host."""
        """Per host, replicas it was told were made before but no longer has (its disks were
        wiped): reported lost, never made anew."""
        self.acked: dict[str, int] = {}
        """Per disk, the writes its guest was told are done."""
        self.seq: dict[tuple[str, str], int] = {}
        """Per copy (disk, host), the last write it has."""

    # ------------------------------------------------------------------ hosts

    def add_host(self, host: str, domain: str, capacity_mib: int = 0, port: int = PORT) -> None:
        self.domains[host] = domain
        self.capacity_mib[host] = capacity_mib
        self.ports = getattr(self, "ports", {})
        self.ports[host] = port
        self.beat(host)

    def beat(self, host: str, report: InventoryReport | None = None) -> list[Action]:
        """One report of ``host``: it applies the set it was last sent, its VMs write (each
        write acknowledged only once every copy they write to has it), and it reports."""
        sent = self.sent_sets.get(host)
        if sent is not None:
            self._apply_set(host, sent)
        self._write(host)
        applied = self.applied.get(host)
        lost = self.lost.get(host, set())
        held = self._held(host)
        made = self.made.setdefault(host, set())
        filling = self._fill(host, held)
        making = (self.held_back.get(host, set()) | self.new.pop(host, set())) - made
        fills = {r.disk_id for r in applied.replicas if r.fill_from} if applied else set()
        progress = self.fill_progress.get(host, 0.0)
        unready = (
            [
                ReplicaStatus(disk_id=disk, state=ReplicaState.CREATING)
                for disk in sorted(making & held - filling - fills)
            ]
            + [
                ReplicaStatus(disk_id=disk, state=ReplicaState.FILLING, progress=progress)
                for disk in sorted(filling | (making & held & fills))
            ]
            + [
                ReplicaStatus(disk_id=disk, state=ReplicaState.LOST, retryable=False)
                for disk in sorted(lost)
            ]
        )
        made.update(held - making - filling)
        return self.heartbeat(
            host,
            self.inventory(host),
            fault_domain=self.domains[host],
            replica_port=self.ports[host],
            replica_digest=applied.digest if applied is not None else "",
            replicas=unready,
            disk_capacity_mib=self.capacity_mib[host],
            boot_id=f"boot-{self.boots.get(host, 1)}",
            report=report,
        )

    def _apply_set(self, host: str, config: ConfigureReplicas) -> None:
        """Replicas new to the host are made: filled from their source, else empty (an empty
        copy has none of the writes, unless the disk never had any)."""
        held = self._held(host)
        lost = self.lost.setdefault(host, set())
        for spec in config.replicas:
            if spec.disk_id not in held and spec.disk_id in config.existing:
                lost.add(spec.disk_id)  # made before, gone with the host's disks: never anew
            elif spec.disk_id not in held and spec.fill_from is not None:
                self.filling.setdefault(host, {})[spec.disk_id] = spec.fill_from.host
            elif spec.disk_id not in held:
                self.new.setdefault(host, set()).add(spec.disk_id)  # reported creating once
                self.seq[(spec.disk_id, host)] = 0
        kept = {r.disk_id for r in config.replicas}
        for disk in held - kept:
            self.seq.pop((disk, host), None)
            self.made.get(host, set()).discard(disk)
        lost &= kept
        self.applied[host] = config

    def _fill(self, host: str, held: set[str]) -> set[str]:
        """Copies being filled from another host's copy: made once their source serves it
        (as it is then), still filling while it does not (gone, or it lost its copy)."""
        filling = self.filling.setdefault(host, {})
        for disk, source in list(filling.items()):
            if disk not in held:
                del filling[disk]
            elif source in self.domains and disk in self._held(source):
                self.seq[(disk, host)] = self.seq.get((disk, source), 0)
                del filling[disk]
        return set(filling)

    def _held(self, host: str) -> set[str]:
        """The replicas ``host`` holds: those of the set it applied, but the lost ones."""
        applied = self.applied.get(host)
        named = {r.disk_id for r in applied.replicas} if applied is not None else set()
        return named - self.lost.get(host, set())

    def _write(self, host: str) -> None:
        """Each VM the host runs writes once to each disk: to every copy it writes to; a
        copy on a host that is gone fails the write (the VM is paused, nothing acknowledged)."""
        for name, _ in self.started.get(host, {}).items():
            for (vm, disk), view in self.disks.items():
                if vm != name or view.failed:
                    continue
                gone = [h for h in view.in_sync if h not in self.domains]
                if gone:
                    view.in_sync = [h for h in view.in_sync if h not in gone]
                    view.failed = gone
                    continue
                self.acked[disk] = self.acked.get(disk, 0) + 1
                for h in view.in_sync:
                    self.seq[(disk, h)] = self.acked[disk]

    def kill(self, host: str, *, wipe: bool = True) -> None:
        """The host is gone: its agent and VMs killed (and with ``wipe``, its disks)."""
        self.gone[host] = self.domains.pop(host)
        self.started.pop(host, None)
        if wipe:
            self.made.pop(host, None)
            self.lost.pop(host, None)
            self.filling.pop(host, None)
            self.applied.pop(host, None)
            self.sent_sets.pop(host, None)
            for key in [k for k in self.seq if k[1] == host]:
                del self.seq[key]

    def revive(self, host: str) -> None:
        """The host's agent starts again, as a new boot, with what its disks kept."""
        self.domains[host] = self.gone.pop(host)
        self.boots[host] = self.boots.get(host, 1) + 1
        self.beat(host)

    def beat_all(self, *hosts: str) -> None:
        for host in hosts or tuple(self.domains):
            self.beat(host)

    def inventory(self, host: str) -> list[ObservedVm]:
        """What the host runs: every VM it was told to start and not to stop since."""
        inventory = []
        for name, spec in sorted(self.started.get(host, {}).items()):
            reports = [
                DiskReplicas(
                    disk_id=d.disk_id,
                    in_sync=view.in_sync,
                    joining=dict.fromkeys(view.joining, 0.5),
                    failed=view.failed,
                )
                for d in spec.vm.disks
                if (view := self.disks.get((name, d.disk_id))) is not None
            ]
            inventory.append(
                ObservedVm(
                    name=name,
                    generation=spec.generation,
                    state=ObservedState.RUNNING,
                    cpu_milli=spec.vm.cpu_milli,
                    mem_mib=spec.vm.mem_mib,
                    disks=reports,
                )
            )
        return inventory

    # ------------------------------------------------------------------ what agents are sent

    def step(self, *inputs: Input) -> list[Action]:
        actions = super().step(*inputs)
        for action in actions:
            if isinstance(action, SendCommands):
                for command in action.commands:
                    self._take(action.host_id, command)
        return actions

    def _take(self, host: HostId, command: object) -> None:
        self.commands_seen.append((host, command))
        match command:
            case ConfigureReplicas():
                self.sent_sets[host] = command
            case UpdateReplicas():
                self._update_set(host, command)
            case StopVm() | DeleteVm():
                running = self.started.get(host, {})
                known = running.get(VmName(command.name))
                if known is not None and known.generation <= command.generation:
                    del running[VmName(command.name)]
            case StartVm():
                for disk in command.vm.disks:
                    self._check_named(disk.disk_id, [r.host for r in disk.replicas])
                old = self.started.get(host, {}).get(VmName(command.vm.name))
                if old is not None and old.generation >= command.generation:
                    return  # idempotent by generation
                self.started.setdefault(host, {})[VmName(command.vm.name)] = command
                for disk in command.vm.disks:
                    if disk.replicas:
                        in_sync = [r.host for r in disk.replicas]
                        self.disks[(VmName(command.vm.name), disk.disk_id)] = DiskView(in_sync)
            case SetDiskReplicas():
                if VmName(command.name) not in self.started.get(host, {}):
                    return  # the host does not run it (it lost it): it writes to nothing
                self._check_named(command.disk_id, [r.host for r in command.replicas])
                view = self.disks.setdefault((VmName(command.name), command.disk_id), DiskView([]))
                view.in_sync = [r.host for r in command.replicas]
                view.joining = [r.host for r in command.joining if r.host not in view.in_sync]
                view.failed = []
            case _:
                pass

    def _update_set(self, host: str, update: UpdateReplicas) -> None:
        """An update applies to the set it is based on (as an agent's), else is ignored."""
        sent = self.sent_sets.get(host)
        held = ReplicaSet.of(sent) if sent is not None else ReplicaSet()
        if held.problem(update) is not None:
            self.ignored += 1
            return
        held.apply(update)
        self.sent_sets[host] = held.whole(update.digest)

    def _check_named(self, disk: str, hosts: list[str]) -> None:
        """A VM is told to write to these copies: each must have every acknowledged write."""
        acked = self.acked.get(disk, 0)
        for host in hosts:
            if host not in self.gone and self.seq.get((disk, host), 0) != acked:
                have = self.seq.get((disk, host), 0)
                self.violations.append(f"{disk} on {host} named with {have} of {acked} writes")

    def join(self, vm: str) -> None:
        """The VM's host brought every joining copy (of a host still there) in step."""
        for (name, disk), view in self.disks.items():
            if name == vm:
                joined = [h for h in view.joining if h in self.domains]
                for h in joined:
                    self.seq[(disk, h)] = self.acked.get(disk, 0)
                view.in_sync += joined
                view.joining = []

    def fail_copy(self, vm: str, host: str) -> None:
        """The VM's copies on ``host`` failed a write (the VM is paused)."""
        for (name, _), view in self.disks.items():
            if name == vm and host in view.in_sync:
                view.in_sync.remove(host)
                view.failed.append(host)

    # ------------------------------------------------------------------ reading the records

    def copies(self, vm: str, state: CopyState | None = None) -> list[list[str]]:
        """Per replicated disk of ``vm``, the hosts of its copies (in ``state``)."""
        return [
            [c.host for c in d.copies if state is None or c.state is state]
            for d in self.vm(vm).disks
            if d.replicated
        ]

    def wanted_set(self, host: str) -> ConfigureReplicas:
        """The replica set the core wants ``host`` to hold now."""
        from scheduler.core import hostreplicas

        return hostreplicas.desired(self.state, HostId(host), 0.0)

    def sent(self, kind: type[object], host: str | None = None) -> list[object]:
        return [c for h, c in self.commands_seen if isinstance(c, kind) and host in (None, h)]
