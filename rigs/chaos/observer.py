"""The independent observer: judges the run from the agents' audit logs, the publishers' acks,
the events stream and the fault timeline. It never asks the scheduler whether it was right; the
API is read only at the end, for the final state.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.messages import (
    HostEvent,
    HostInfo,
    HostState,
    JobRejected,
    VmEvent,
    VmInfo,
    VmState,
)
from common.netconfig import NetConfig
from common.network_messages import (
    ConfigureNetworks,
    HostEndpoint,
    HostNetwork,
    NicLease,
    VnetInfo,
)
from common.spec_messages import DiskStorage
from hostagent.__main__ import EXIT_HOST_ID_REFUSED
from rigs.chaos.faults import (
    AGENT_SIDE,
    ALL_AGENTS,
    DEAD_AFTER_S,
    NATS_SILENT,
    Fault,
    Kind,
    Violation,
)
from rigs.chaos.load import SIZES, Acked, Op
from rigs.chaos.rig import CPU_MILLI, MEM_MIB

THAW_GRACE_S = 0.5
"""After SIGCONT an agent's first fence-watchdog pass pauses what it may no longer execute; the
fake driver's VMs live in the agent, so they count as executing again only after this grace."""
DOWN_GRACE_S = DEAD_AFTER_S + 3.0
"""A host may be declared dead up to this long after an agent-side fault on it ended (its
restart, or the first heartbeat after a partition, takes a moment)."""

OUTAGE_SETTLE_S = 0.2
"""Commands an agent received just before nats-server died may still complete this long after."""

_EXECUTES = {"running": True, "resume": True, "pause": False, "stop": False}
_RELEASES = {"stop", "destroy", "fail"}


@dataclass(frozen=True, order=True)
class Row:
    t: float
    host: str
    vm: str
    gen: int
    event: str


def read_rows(agents_dir: Path) -> list[Row]:
    """Every agent's executions.jsonl, merged and sorted by time."""
    rows = []
    for path in agents_dir.glob("*/executions.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows.append(Row(float(r["t"]), r["host"], r["vm"], int(r["gen"]), r["event"]))
    return sorted(rows)


@dataclass
class Replay:
    """Walks the audit logs and the agent-side faults in time order, keeping per host what it
    holds (allocations) and what executes, and records overlaps and over-commitment."""

    held: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    """host -> vm -> generation held (paused or not)."""
    executing: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    frozen: dict[str, set[str]] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)

    def run(self, rows: list[Row], faults: list[Fault], sizes: dict[str, str]) -> None:
        marks: list[tuple[float, int, str, Row | str]] = []
        for f in faults:
            if f.host is None or not f.start:
                continue
            if f.kind is Kind.AGENT_KILL:
                marks.append((f.start, 0, f.host, "kill"))
            elif f.kind in (Kind.AGENT_STOP_SHORT, Kind.AGENT_STOP_LONG):
                marks += [(f.start, 0, f.host, "freeze"), (f.end, 0, f.host, "thaw")]
                marks.append((f.end + THAW_GRACE_S, 0, f.host, "warm"))
        items = marks + [(r.t, 1, r.host, r) for r in rows]
        items.sort(key=lambda m: m[:2])
        for t, _, host, what in items:
            if isinstance(what, Row):
                self._row(what, sizes)
            else:
                self._mark(t, host, what)

    def _mark(self, t: float, host: str, what: str) -> None:
        if what == "kill":
            self.held[host].clear()
            self.executing[host].clear()
            self.frozen.pop(host, None)
        elif what == "freeze":
            self.frozen[host] = set(self.executing[host])
            self.executing[host].clear()
        elif what == "thaw":
            pass  # executing again only after the grace: see THAW_GRACE_S
        elif what == "warm" and host in self.frozen:
            thawed = self.frozen.pop(host)
            self.executing[host] |= {vm for vm in thawed if vm in self.held[host]}
            for vm in thawed:
                self._check_overlap(t, vm)

    def _row(self, row: Row, sizes: dict[str, str]) -> None:
        host, vm = row.host, row.vm
        if row.event in ("start", "incoming"):  # held, not executing (incoming: a migration's)
            self.held[host][vm] = row.gen
            self._check_capacity(row, sizes)
        elif row.event in _RELEASES:
            self.held[host].pop(vm, None)
        if row.event not in _EXECUTES and row.event not in _RELEASES:
            return
        runs = _EXECUTES.get(row.event, False)
        frozen = self.frozen.get(host)
        target = frozen if frozen is not None else self.executing[host]
        if runs:
            target.add(vm)
        else:
            target.discard(vm)
        if runs and frozen is None:
            self._check_overlap(row.t, vm)

    def _check_overlap(self, t: float, vm: str) -> None:
        on = sorted(h for h, vms in self.executing.items() if vm in vms)
        if len(on) > 1:
            self.violations.append(Violation("two_copies", f"t={t:.3f} vm={vm} on {on}"))

    def _check_capacity(self, row: Row, sizes: dict[str, str]) -> None:
        cpu = mem = 0
        for vm in self.held[row.host]:
            c, m = SIZES[sizes[vm]] if vm in sizes else (0, 0)
            cpu, mem = cpu + c, mem + m
        if cpu > CPU_MILLI or mem > MEM_MIB:
            detail = f"t={row.t:.3f} host={row.host} cpu_milli={cpu} mem_mib={mem} after {row.vm}"
            self.violations.append(Violation("over_capacity", detail))


def healthy_hosts_declared_dead(events: Iterable[object], faults: list[Fault]) -> list[Violation]:
    """A host-down event with no agent-side fault on that host (or on every host) shortly
    before it."""
    found = []
    for event in events:
        if not isinstance(event, HostEvent) or event.state is not HostState.DOWN:
            continue
        t = event.time.timestamp()
        if not any(
            ((f.host == event.host_id and f.kind in AGENT_SIDE) or f.kind in ALL_AGENTS)
            and f.start <= t <= f.end + DOWN_GRACE_S
            for f in faults
        ):
            detail = f"t={t:.3f} host={event.host_id} reason={event.reason!r}"
            found.append(Violation("healthy_host_declared_dead", detail))
    return found


def destroyed_during_nats_outages(
    rows: list[Row],
    faults: list[Fault],
    acked: Sequence[Acked] = (),
    events: Iterable[object] = (),
) -> list[Violation]:
    """Only the scheduler's word removes a VM: while NATS is down (dead or frozen) no agent hears
    it, so no VM
    may be stopped or destroyed then (fencing pauses; it never destroys). The word may have been
    given before the outage and arrive late: a delete first sent before the outage began may
    complete during it, even when its acknowledgement only came after the outage (seen: a
    DeleteVm held back by TCP retransmission through a partition landed as nats-server was
    killed; and a delete the scheduler carried out just before nats-server died, whose reply
    was lost, acknowledged to the retrying client after the restart). So may the removal of a
    copy the scheduler had given up before the outage, as its events show (seen: a host cut off
    by a partition declared dead, its VMs started elsewhere at a new generation; the DeleteVm of
    the old copies, held back by TCP retransmission through the partition, landed while
    nats-server was frozen)."""
    outages = [
        (f.start + OUTAGE_SETTLE_S, f.end, f.start)
        for f in faults
        if f.kind in NATS_SILENT and f.start
    ]
    deleted_at = {a.vm: a.sent_at or a.acked_at for a in acked if a.op is Op.DELETE}
    given_up = _given_up(events)
    return [
        Violation("removed_during_nats_outage", f"t={r.t:.3f} {r.event} {r.vm} on {r.host}")
        for r in rows
        if r.event in ("stop", "destroy")
        and any(
            a <= r.t <= b
            and deleted_at.get(r.vm, float("inf")) > began
            and given_up.get((r.vm, r.gen), float("inf")) > began
            for a, b, began in outages
        )
    ]


_GIVES_UP = {VmState.STOPPING, VmState.STOPPED, VmState.DELETING, VmState.DELETED, VmState.FAILED}


def _given_up(events: Iterable[object]) -> dict[tuple[str, int], float]:
    """(VM, generation) -> when an event first showed the scheduler no longer wants that copy
    to run: the VM at a later generation, or stopping, deleted, failed at that one."""
    first: dict[tuple[str, int], float] = {}
    newest: dict[str, int] = {}
    for event in sorted((e for e in events if isinstance(e, VmEvent)), key=lambda e: e.time):
        t = event.time.timestamp()
        done = event.generation if event.state in _GIVES_UP else event.generation - 1
        for gen in range(newest.get(event.name, 0) + 1, done + 1):
            first.setdefault((event.name, gen), t)
        newest[event.name] = max(newest.get(event.name, 0), done)
    return first


def duplicates_refused(
    faults: list[Fault], duplicate_dir: Callable[[int], Path]
) -> list[Violation]:
    """Each second agent started under a live host's id was refused (it exited with the refusal
    status by itself) and executed nothing: its own audit log stays empty."""
    found = []
    for f in faults:
        if f.kind is not Kind.DUPLICATE_HOST_ID or not f.start:
            continue
        if f.duplicate_exit != EXIT_HOST_ID_REFUSED:
            detail = f"fault #{f.index} host={f.host} exit={f.duplicate_exit}"
            found.append(Violation("duplicate_not_refused", detail))
        audits = list(duplicate_dir(f.index).glob("*/executions.jsonl"))
        if any(path.read_text().strip() for path in audits):
            found.append(Violation("duplicate_executed", f"fault #{f.index} host={f.host}"))
    return found


def address_violations(events: Iterable[object]) -> list[Violation]:
    """From the VM events, in the scheduler's order (``seq``): no address of a network is held
    by two live VMs at once, and a VM keeps each of its addresses for its life (every
    generation, every host). An address is the VM's from the first event showing it until its
    ``deleted`` event.

    Not in the stream's order: an event whose publication nats-server lost (it stopped as the
    event went out) is published again once its ack is overdue (5 s), behind events committed
    after it; the stream then holds, say, a VM's ``scheduled`` after its ``deleted``."""
    holder: dict[tuple[str, str], str] = {}
    identity: dict[tuple[str, str], str] = {}
    """(VM, network) -> the address it first had."""
    found: list[Violation] = []
    vm_events = sorted((e for e in events if isinstance(e, VmEvent)), key=lambda e: e.seq)
    for event in vm_events:
        where = f"seq={event.seq} vm={event.name} generation={event.generation}"
        if event.state is VmState.DELETED:
            for key in [k for k, name in holder.items() if name == event.name]:
                del holder[key]
            for key in [k for k in identity if k[0] == event.name]:
                del identity[key]
            continue
        for nic in event.nics:
            if not nic.ip:
                continue
            first = identity.setdefault((event.name, nic.vnet), nic.ip)
            if first != nic.ip:
                detail = f"{where} {nic.vnet} address {first} became {nic.ip}"
                found.append(Violation("address_changed", detail))
            other = holder.setdefault((nic.vnet, nic.ip), event.name)
            if other != event.name:
                detail = f"{where} {nic.vnet} {nic.ip} is held by {other} too"
                found.append(Violation("address_shared", detail))
    return found


def mistakes_stood_by(faults: list[Fault], log_of: Callable[[int], Path]) -> list[Violation]:
    """Each scheduler started by mistake (an empty store, beside a leader that has run a while)
    became a standby and never led: it sent nothing, so it destroyed nothing."""
    found = []
    for f in faults:
        if f.kind is not Kind.SECOND_SCHEDULER or not f.start:
            continue
        path = log_of(f.index)
        text = path.read_text(errors="replace") if path.exists() else ""
        if "scheduler leading" in text:
            found.append(Violation("mistaken_scheduler_led", f"fault #{f.index}: see {path}"))
        elif "scheduler standby" not in text:
            found.append(Violation("mistaken_scheduler_not_standby", f"fault #{f.index}: {path}"))
    return found


def acked_outcomes(
    acked: list[Acked],
    vms: dict[str, VmInfo],
    events: list[object],
    delete_sent: Collection[str] = (),
) -> list[Violation]:
    """Every acknowledged create ends running (unless a delete was sent for it: one whose
    answer was lost may have been carried out), every acknowledged delete gone."""
    found = []
    deleted = {a.vm for a in acked if a.op is Op.DELETE} | set(delete_sent)
    rejected = {e.request_id for e in events if isinstance(e, JobRejected)}
    for a in acked:
        vm = vms.get(a.vm)
        gone = vm is None or vm.state is VmState.DELETED
        if a.op is Op.CREATE_JOB and a.request_id in rejected:
            found.append(Violation("acked_job_rejected", f"{a.vm} request_id={a.request_id}"))
        elif a.op is Op.DELETE and not gone:
            found.append(Violation("acked_delete_not_gone", f"{a.vm} state={vm and vm.state}"))
        elif a.op is not Op.DELETE and a.vm not in deleted:
            if vm is None:
                found.append(Violation("acked_create_vanished", f"{a.vm} ({a.op})"))
            elif vm.state is not VmState.RUNNING:
                found.append(Violation("acked_create_not_running", f"{a.vm} state={vm.state}"))
    return found


def convergence_problems(
    rows: list[Row],
    faults: list[Fault],
    vms: dict[str, VmInfo],
    acked: Sequence[Acked] = (),
    delete_sent: Collection[str] = (),
) -> list[str]:
    """What keeps the cluster from its converged state: desired VMs not running exactly once at
    their current generation on their host, or anything else held on an agent (orphans)."""
    replay = Replay()
    replay.run(rows, faults, {})
    problems = []
    desired = {n: vm for n, vm in vms.items() if vm.state is not VmState.DELETED}
    for name, vm in sorted(desired.items()):
        on = sorted(h for h, held in replay.executing.items() if name in held)
        if vm.state is not VmState.RUNNING:
            problems.append(f"{name} is {vm.state}")
        elif on != [vm.host]:
            problems.append(f"{name} executing on {on}, expected [{vm.host}]")
        elif replay.held[str(vm.host)].get(name) != vm.generation:
            problems.append(f"{name} generation {replay.held[str(vm.host)].get(name)} held")
    deleted = {a.vm for a in acked if a.op is Op.DELETE} | set(delete_sent)
    for a in acked:  # a job fetched by a scheduler killed before its commit: redelivered later
        if a.vm not in vms and a.vm not in deleted:
            problems.append(f"acked {a.op} of {a.vm} not yet known")
    for host, held in sorted(replay.held.items()):
        for name, gen in sorted(held.items()):
            owner = desired.get(name)
            if owner is None or owner.host != host:
                problems.append(f"orphan {name} generation {gen} on {host}")
    return problems


def wanted_networks(
    host: str, vms: dict[str, VmInfo], vnets: list[VnetInfo], hosts: list[HostInfo]
) -> ConfigureNetworks:
    """The network configuration ``host`` should hold once converged, from the final state the
    API shows (not from the scheduler's own computation): per network of its VMs' NICs the
    leases, the other up hosts carrying it as peers, and its VMs' endpoints."""
    placed = [vm for vm in vms.values() if vm.state is not VmState.DELETED and vm.host]
    up = {h.host_id: h.underlay_ip for h in hosts if h.state is HostState.UP and h.underlay_ip}
    carriers: dict[str, set[str]] = defaultdict(set)
    leases: dict[str, list[NicLease]] = defaultdict(list)
    endpoints: list[HostEndpoint] = []
    for vm in placed:
        for nic in vm.nics:
            carriers[nic.vnet].add(str(vm.host))
            if vm.host == host and nic.ip:
                leases[nic.vnet].append(NicLease(vm=vm.name, mac=nic.mac, ip=nic.ip))
        if vm.host == host and vm.nics and vm.nics[0].ip:
            endpoints += [
                HostEndpoint(
                    vm=vm.name,
                    vm_ip=vm.nics[0].ip,
                    vm_port=e.vm_port,
                    public_port=e.public_port,
                    protocol=e.protocol,
                    allow=list(e.allow),
                )
                for e in vm.endpoints
                if e.public_port is not None
            ]
    networks = [
        HostNetwork(
            vnet=v.name,
            vni=v.vni,
            cidr=v.cidr,
            gateway=v.gateway,
            peers=sorted({up[h] for h in carriers[v.name] if h in up} - {up.get(host, "")}),
            leases=leases[v.name],
        )
        for v in vnets
        if leases.get(v.name)
    ]
    config = ConfigureNetworks(networks=networks, endpoints=endpoints, digest="")
    config.digest = NetConfig.of(config).digest
    return config


def network_problems(
    vms: dict[str, VmInfo],
    vnets: list[VnetInfo],
    hosts: list[HostInfo],
    reported: dict[str, str],
) -> list[str]:
    """Up hosts whose agents report (in their heartbeats) another network digest than that of
    the configuration they should hold."""
    problems = []
    for info in sorted(hosts, key=lambda h: h.host_id):
        if info.state is not HostState.UP:
            continue
        wanted = wanted_networks(info.host_id, vms, vnets, hosts).digest
        held = reported.get(info.host_id)
        if held != wanted:
            problems.append(f"{info.host_id} holds network digest {held!r}, not {wanted!r}")
    return problems


def disk_content_violations(
    vms: dict[str, VmInfo],
    acked: dict[str, int],
    copies: dict[str, dict[str, int]],
    later: dict[str, VmInfo] | None = None,
) -> list[Violation]:
    """Every copy the scheduler counts current of a replicated disk holds at least every write
    acknowledged to the disk's guest, whichever of its runs wrote it (``acked``: disk id ->
    writes; ``copies``: disk id -> host -> writes the copy holds). Judged for each VM the
    scheduler still has; a disk with acknowledged writes and no current copy lost them all.

    Read in this order: ``acked``, ``vms``, ``copies``, ``later`` (the VMs again). A copy is
    judged only if current in both ``vms`` and ``later``: one the scheduler dropped meanwhile
    (and its host deleted) has nothing left to hold."""
    found = []
    for name, vm in sorted(vms.items()):
        if vm.state is VmState.DELETED:
            continue
        still = _current(later[name]) if later is not None and name in later else None
        for disk_id, current in _current(vm).items():
            want = acked.get(disk_id, 0)
            where = f"vm={name} disk={disk_id}"
            if not current and want:
                detail = f"{where} has no current copy, {want} writes acknowledged"
                found.append(Violation("disk_copies_lost", detail))
            for host in current:
                have = copies.get(disk_id, {}).get(host)
                if still is not None and host not in still.get(disk_id, []):
                    continue
                if have is None or have < want:
                    held = "is missing" if have is None else f"holds {have} writes"
                    detail = f"{where} copy on {host} {held}, {want} acknowledged"
                    found.append(Violation("disk_copy_behind", detail))
    return found


LOST_FOR_GOOD = "every replica of disk "


def disks_given_up(events: Iterable[object]) -> list[Violation]:
    """A VM failed for its disk's every copy lost. The campaign wipes no host's disks: every
    copy outlives every fault (a host silent or killed comes back with it), so no disk may be
    given up; a late heartbeat never destroys a VM's disks."""
    return [
        Violation("disk_given_up", f"t={event.time.timestamp():.3f} vm={event.name} {event.reason}")
        for event in events
        if isinstance(event, VmEvent)
        and event.state is VmState.FAILED
        and event.reason.startswith(LOST_FOR_GOOD)
    ]


def _current(vm: VmInfo) -> dict[str, list[str]]:
    """The VM's replicated disks: disk id -> the hosts of their current copies."""
    return {
        disk.disk_id: [r.host for r in disk.replicas if r.state == "current"]
        for disk in vm.disks
        if disk.storage is DiskStorage.REPLICATED
    }
