"""Prometheus metrics of the scheduler, on a registry of its own (never the global one).

Two kinds:

- **Gauges computed at scrape time** from the cluster state (``ClusterCollector``): hosts and VMs
  by state, capacity and allocation per region, heartbeat age, addresses used per network.
  Nothing on the hot path updates them; a scrape reads the last committed state
  (scheduler/shell/readview.py).
- **Histograms and counters fed by the actions** of each committed core step (the app calls
  ``observe`` before carrying them out): placement latency (pending → scheduled), failure
  detection (last heartbeat → host declared dead), recovery (host declared dead → each of its
  VMs running again), requests by source and outcome, VM transitions.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Final, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.clock import Clock
from common.ids import HostId
from common.messages import HostEvent, HostState, VmEvent, VmState
from scheduler.core.contract import Action, Emit, Reply
from scheduler.core.replicas import COPY_CURRENT, COPY_STARTED
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostRecord, HostRuntime

PLACEMENT_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                              2.5, 5.0, 10.0, 30.0, 60.0, 300.0)  # fmt: skip
DETECTION_BUCKETS_S: Final = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 15.0, 30.0, 60.0)
RECOVERY_BUCKETS_S: Final = (0.5, 1.0, 2.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)
HOST_STATES: Final = ("up", "cordoned", "draining", "fenced", "down")
"""Exclusive: a down host is ``down`` whatever else it is; an up one is ``draining``, else
``cordoned``, else ``fenced`` (it paused its VMs), else ``up``."""

Observer = Callable[[Sequence[Action], Callable[[int], str]], None]


class MetricsSource(Protocol):
    """What the metrics read of the scheduler (``SchedulerApp`` provides it)."""

    clock: Clock
    observers: list[Observer]

    def committed(self) -> ClusterState | None:
        """The cluster as last committed (None before the store is loaded)."""
        ...


class ClusterCollector(Collector):
    """Gauges computed from the cluster state at each scrape."""

    def __init__(self, state: Callable[[], ClusterState | None], now_s: Callable[[], float]):
        self._state = state
        self._now_s = now_s

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        if state is None:
            return
        yield from _host_metrics(state, self._now_s())
        yield _vm_metric(state)
        yield GaugeMetricFamily(
            "stratus_migrations_in_flight",
            "Live migrations under way",
            value=len(state.migrating),
        )
        yield from _network_metrics(state)
        yield from _replica_metrics(state)


def _host_state(record: HostRecord, runtime: HostRuntime | None) -> str:
    if not record.up:
        return "down"
    if record.draining:
        return "draining"
    if record.cordoned:
        return "cordoned"
    return "fenced" if runtime is not None and runtime.fenced else "up"


def _host_metrics(state: ClusterState, now_s: float) -> Iterator[Metric]:
    hosts = GaugeMetricFamily(
        "stratus_hosts",
        "Hosts by region and state (states are exclusive)",
        labels=["region", "state"],
    )
    names = ("capacity_cpu_milli", "capacity_mem_mib", "allocated_cpu_milli", "allocated_mem_mib")
    helps = (
        "CPU of the up hosts (millicores, before overcommit)",
        "Memory of the up hosts (MiB)",
        "CPU held by VMs (millicores)",
        "Memory held by VMs (MiB)",
    )
    region_families = [
        GaugeMetricFamily(f"stratus_region_{name}", text, labels=["region"])
        for name, text in zip(names, helps, strict=True)
    ]
    age = GaugeMetricFamily(
        "stratus_host_heartbeat_age_seconds",
        "Seconds since the host's last heartbeat",
        labels=["host_id", "region"],
    )
    counts: Tally[tuple[str, str]] = Tally()
    totals: dict[str, list[int]] = {}
    max_age = 0.0
    for host_id, record in state.hosts.items():
        runtime = state.runtimes.get(host_id)
        counts[(record.region, _host_state(record, runtime))] += 1
        sums = totals.setdefault(record.region, [0, 0, 0, 0])
        if record.up:
            sums[0] += record.capacity.cpu_milli
            sums[1] += record.capacity.mem_mib
        allocated = state.allocated.get(host_id)
        if allocated is not None:
            sums[2] += allocated.cpu_milli
            sums[3] += allocated.mem_mib
        if runtime is not None:
            seconds = max(0.0, now_s - runtime.last_seen_s)
            age.add_metric([host_id, record.region], seconds)
            if record.up:
                max_age = max(max_age, seconds)
    for region, sums in sorted(totals.items()):
        for host_state in HOST_STATES:
            hosts.add_metric([region, host_state], counts[(region, host_state)])
        for family, value in zip(region_families, sums, strict=True):
            family.add_metric([region], value)
    worst = GaugeMetricFamily(
        "stratus_heartbeat_age_max_seconds", "Largest heartbeat age among up hosts", value=max_age
    )
    yield from (hosts, *region_families, age, worst)


def _vm_metric(state: ClusterState) -> Metric:
    vms = GaugeMetricFamily("stratus_vms", "VMs by state and size", labels=["state", "size"])
    counts: Tally[tuple[str, str]] = Tally((r.state.value, r.size) for r in state.vms.values())
    for size in sorted({size for _, size in counts}):
        for vm_state in VmState:
            vms.add_metric([vm_state.value, size], counts[(vm_state.value, size)])
    return vms


def _network_metrics(state: ClusterState) -> Iterator[Metric]:
    labels = ["vnet", "region"]
    used = GaugeMetricFamily(
        "stratus_network_addresses_used", "Addresses held by VMs per network", labels=labels
    )
    total = GaugeMetricFamily(
        "stratus_network_addresses_total", "Addresses VMs can have per network", labels=labels
    )
    for name, record in sorted(state.vnets.items()):
        ipam = state.net.ipams.get(name)
        if record.deleted or ipam is None:
            continue
        where = [name, record.region or ""]
        used.add_metric(where, ipam.used)
        total.add_metric(where, ipam.total)
    yield from (used, total)


def _replica_metrics(state: ClusterState) -> Iterator[Metric]:
    by_copies = GaugeMetricFamily(
        "stratus_replicated_vms",
        "VMs with replicated disks, by the fewest current copies one of their disks has "
        "(below [storage] replicas: degraded, until its new copies are current)",
        labels=["copies"],
    )
    for count, names in sorted(state.disks.by_current.items()):
        by_copies.add_metric([str(count)], len(names))
    making = GaugeMetricFamily(
        "stratus_replica_copies_making",
        "Disk copies being made (filled from a current copy, or joining a running VM)",
        value=sum(state.disks.making.values()),
    )
    capacity = GaugeMetricFamily(
        "stratus_region_disk_capacity_mib",
        "Disk space the up hosts report (hosts that report none are not counted)",
        labels=["region"],
    )
    used = GaugeMetricFamily(
        "stratus_region_disk_used_mib",
        "Disk space taken on hosts by disks and disk copies (full size)",
        labels=["region"],
    )
    totals: dict[str, list[int]] = {}
    for host_id, record in state.hosts.items():
        sums = totals.setdefault(record.region, [0, 0])
        if record.up:
            sums[0] += record.disk_capacity_mib
        sums[1] += state.disks.used_mib.get(host_id, 0)
    for region, (cap, use) in sorted(totals.items()):
        capacity.add_metric([region], cap)
        used.add_metric([region], use)
    yield from (by_copies, making, capacity, used)


class _Counts:
    """A labelled counter whose children are each looked up once: prometheus_client's
    ``labels`` checks the values and takes a lock at every call, and every VM event and every
    reply is counted (1.8 us a count through ``labels``, 0.4 us through the child)."""

    def __init__(self, metric: Counter) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Counter] = {}

    def inc(self, *labels: str) -> None:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self.metric.labels(*labels)
        child.inc()


class SchedulerMetrics:
    """The scheduler's registry: scrape-time gauges plus histograms fed by committed actions."""

    def __init__(self, source: MetricsSource) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._source = source
        r = self.registry
        self.placement_latency = Histogram(
            "stratus_placement_latency_seconds",
            "From a VM becoming pending to its placement on a host",
            buckets=PLACEMENT_BUCKETS_S,
            registry=r,
        )
        self.failure_detection = Histogram(
            "stratus_failure_detection_seconds",
            "From a host's last heartbeat to the host being declared dead",
            buckets=DETECTION_BUCKETS_S,
            registry=r,
        )
        self.recovery = Histogram(
            "stratus_recovery_seconds",
            "From a host being declared dead to each of its VMs running again elsewhere",
            buckets=RECOVERY_BUCKETS_S,
            registry=r,
        )
        self.requests = Counter(
            "stratus_requests",
            "Mutating requests answered, by source (nats, job, http) and outcome (ok or code)",
            ["source", "outcome"],
            registry=r,
        )
        self.transitions = Counter(
            "stratus_vm_transitions", "VM events, by the state entered", ["state"], registry=r
        )
        self.migrations = Counter(
            "stratus_migrations",
            "Live migrations started, succeeded and failed (or cancelled), by cause",
            ["outcome", "cause"],
            registry=r,
        )
        self.replica_copies = Counter(
            "stratus_replica_rebuilds",
            "New copies of replicated disks (rebuilds after a loss), started and made current",
            ["outcome"],
            registry=r,
        )
        r.register(ClusterCollector(self._state, source.clock.monotonic_s))
        self._pending_since: dict[str, datetime] = {}
        self._down_at: dict[str, datetime] = {}
        self._recovering: dict[str, datetime] = {}
        self._requests = _Counts(self.requests)
        self._transitions = _Counts(self.transitions)

    def _state(self) -> ClusterState | None:
        return self._source.committed()

    def attach(self) -> SchedulerMetrics:
        """Start observing the scheduler's committed actions."""
        self._source.observers.append(self.observe)
        return self

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ fed by the core loop

    def observe(self, actions: Sequence[Action], source_of: Callable[[int], str]) -> None:
        for action in actions:
            if isinstance(action, Emit):
                if isinstance(action.event, VmEvent):
                    self._vm_event(action.event)
                elif isinstance(action.event, HostEvent):
                    self._host_event(action.event)
            elif isinstance(action, Reply):
                self._requests.inc(source_of(action.token), _outcome(action.body))

    def _vm_event(self, event: VmEvent) -> None:
        name = event.name
        if event.migration_outcome is not None and event.migration is not None:
            cause = event.migration.cause.value
            self.migrations.labels(event.migration_outcome.value, cause).inc()
            if event.state is VmState.RUNNING:
                return  # a migration's event, not a transition
        self._replica_event(event.reason)
        self._transitions.inc(event.state.value)
        match event.state:
            case VmState.PENDING:
                self._pending_since.setdefault(name, event.time)
            case VmState.SCHEDULED:
                since = self._pending_since.pop(name, None)
                if since is not None:
                    self.placement_latency.observe(max(0.0, (event.time - since).total_seconds()))
            case VmState.LOST:
                down_at = self._down_at.get(event.host or "")
                if down_at is not None:
                    self._recovering[name] = down_at
            case VmState.RUNNING:
                down_at = self._recovering.pop(name, None)
                if down_at is not None:
                    self.recovery.observe(max(0.0, (event.time - down_at).total_seconds()))
            case VmState.STOPPED | VmState.DELETED | VmState.FAILED:
                self._pending_since.pop(name, None)
                self._recovering.pop(name, None)
            case _:
                pass

    def _replica_event(self, reason: str) -> None:
        """Count the new disk copies a VM event reports started or current."""
        if reason.startswith(COPY_STARTED):
            self.replica_copies.labels("started").inc(reason.count("; ") + 1)
        elif reason.startswith(COPY_CURRENT) and reason.endswith(" is current"):
            self.replica_copies.labels("current").inc(reason.count("; ") + 1)

    def _host_event(self, event: HostEvent) -> None:
        if event.state is HostState.UP:
            self._down_at.pop(event.host_id, None)
            return
        if event.host_id in self._down_at:
            return  # still down: a cordon or drain event of a dead host
        self._down_at[event.host_id] = event.time
        state = self._state()
        runtime = state.runtimes.get(HostId(event.host_id)) if state else None
        if runtime is not None:
            clock = self._source.clock
            # The event was stamped a moment ago (before the commit): take that moment back.
            since_event_s = (clock.utcnow() - event.time).total_seconds()
            silent_s = clock.monotonic_s() - runtime.last_seen_s - max(0.0, since_event_s)
            self.failure_detection.observe(max(0.0, silent_s))


def _outcome(body: object) -> str:
    """``ok``, or the error code of a reply; a job acked without a body was malformed."""
    if body is None:
        return "invalid_request"
    error = getattr(body, "error", None)
    return "ok" if error is None else str(error.code)
