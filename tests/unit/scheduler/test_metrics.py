"""Prometheus metrics: scrape-time gauges from the state, histograms from the core's actions."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from common.messages import CreateVm, HostRef, ObservedState, VmRef
from common.migration_messages import MigrationStatus
from common.network_messages import NicRequest
from scheduler.core.contract import Action, Input, Mutation, Op
from scheduler.shell.metrics import Observer, SchedulerMetrics
from scheduler.state.cluster import ClusterState
from tests.unit.scheduler.corekit import CoreKit
from tests.unit.scheduler.migkit import beat, handed_over, incoming, migrate, running_vm, vm_at

REPO = Path(__file__).resolve().parents[3]


class KitClock:
    def __init__(self, kit: CoreKit) -> None:
        self._kit = kit

    def monotonic_s(self) -> float:
        return self._kit.t

    def utcnow(self) -> datetime:
        return self._kit.now().wall


class ObservedKit(CoreKit):
    """A CoreKit whose every step is shown to the metrics, as SchedulerApp does after commit."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = KitClock(self)
        self.observers: list[Observer] = []
        self.sources: dict[int, str] = {}

    def committed(self) -> ClusterState | None:
        return self.state

    def step(self, *inputs: Input) -> list[Action]:
        actions = super().step(*inputs)
        for observe in getattr(self, "observers", []):
            observe(actions, lambda token: self.sources.get(token, "nats"))
        return actions


def value(metrics: SchedulerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    assert found is not None, f"{name}{labels} not exported"
    return found


def test_gauges_read_the_state_at_scrape_time() -> None:
    kit = ObservedKit()
    metrics = SchedulerMetrics(kit).attach()  # type: ignore[arg-type]
    kit.heartbeat("h1", region="west")
    kit.heartbeat("h2", region="west")
    kit.heartbeat("h3", region="east")
    kit.create("a", "Large")
    kit.create("b", "Small")
    kit.step(Mutation(Op.CORDON, HostRef(host_id="h3"), 99))
    kit.t += 2.5
    assert value(metrics, "stratus_hosts", region="west", state="up") == 2
    assert value(metrics, "stratus_hosts", region="east", state="cordoned") == 1
    assert value(metrics, "stratus_hosts", region="east", state="up") == 0
    assert value(metrics, "stratus_vms", state="scheduled", size="Large") == 1
    assert value(metrics, "stratus_vms", state="running", size="Small") == 0
    west_cpu = value(metrics, "stratus_region_allocated_cpu_milli", region="west")
    east_cpu = value(metrics, "stratus_region_allocated_cpu_milli", region="east")
    assert west_cpu + east_cpu == 5000
    assert value(metrics, "stratus_region_capacity_mem_mib", region="west") == 2 * 16384
    assert value(metrics, "stratus_host_heartbeat_age_seconds", host_id="h1", region="west") == 2.5
    assert value(metrics, "stratus_heartbeat_age_max_seconds") == 2.5
    # The state changes; the next scrape shows it without anything updating the gauges.
    kit.advance(5)
    assert value(metrics, "stratus_hosts", region="west", state="down") == 2
    # Never the process-wide registry.
    assert REGISTRY.get_sample_value("stratus_heartbeat_age_max_seconds") is None


def test_addresses_used_and_left_per_network() -> None:
    kit = ObservedKit()
    metrics = SchedulerMetrics(kit).attach()  # type: ignore[arg-type]
    kit.heartbeat("h1")
    kit.vnet("front", "10.1.0.0/28", region="local")
    for name in ("a", "b"):
        kit.create(name, nics=[NicRequest(vnet="front")])
    labels = {"vnet": "front", "region": "local"}
    assert value(metrics, "stratus_network_addresses_used", **labels) == 2
    assert value(metrics, "stratus_network_addresses_total", **labels) == 13


def test_histograms_follow_placement_failure_detection_and_recovery() -> None:
    kit = ObservedKit()
    metrics = SchedulerMetrics(kit).attach()  # type: ignore[arg-type]
    kit.create("a", "Large")  # no host yet: pending
    kit.t += 3
    kit.heartbeat("h1", fault_domain="fd-0")
    kit.advance(0.2)  # the tick places it on h1 (capacity appeared)
    assert value(metrics, "stratus_placement_latency_seconds_count") == 1
    assert value(metrics, "stratus_placement_latency_seconds_sum") == 3.2
    kit.heartbeat("h2", fault_domain="fd-1")
    kit.heartbeat("h1", kit.running_on("h1"))
    for _ in range(8):  # h1 falls silent; h2 keeps beating
        kit.heartbeat("h2", kit.running_on("h2"))
        kit.advance(1)
        if not kit.state.hosts["h1"].up:  # type: ignore[index]
            break
    assert not kit.state.hosts["h1"].up  # type: ignore[index]
    assert value(metrics, "stratus_failure_detection_seconds_count") == 1
    detected = value(metrics, "stratus_failure_detection_seconds_sum")
    assert 6.0 < detected <= 7.0
    assert value(metrics, "stratus_placement_latency_seconds_count") == 2  # re-placed on h2
    kit.t += 1.5
    kit.heartbeat("h2", kit.running_on("h2"))
    assert value(metrics, "stratus_recovery_seconds_count") == 1
    assert 1.5 <= value(metrics, "stratus_recovery_seconds_sum") <= 2.5
    assert value(metrics, "stratus_vm_transitions_total", state="lost") == 1


def test_requests_are_counted_by_source_and_outcome() -> None:
    kit = ObservedKit()
    metrics = SchedulerMetrics(kit).attach()  # type: ignore[arg-type]
    kit.heartbeat("h1")
    kit.sources[100] = "job"
    kit.step(Mutation(Op.CREATE, CreateVm(name="a", size="Small"), 100, via_job=True))
    kit.create("b", "Nope")
    kit.mutate(Op.STOP, VmRef(name="missing"))
    assert value(metrics, "stratus_requests_total", source="job", outcome="ok") == 1
    assert value(metrics, "stratus_requests_total", source="nats", outcome="unknown_size") == 1
    assert value(metrics, "stratus_requests_total", source="nats", outcome="not_found") == 1


def test_the_exposition_parses_and_names_every_documented_metric() -> None:
    kit = ObservedKit()
    metrics = SchedulerMetrics(kit).attach()  # type: ignore[arg-type]
    kit.heartbeat("h1")
    names = {family.name for family in text_string_to_metric_families(metrics.render().decode())}
    assert {
        "stratus_hosts",
        "stratus_vms",
        "stratus_region_capacity_cpu_milli",
        "stratus_region_capacity_mem_mib",
        "stratus_region_allocated_cpu_milli",
        "stratus_region_allocated_mem_mib",
        "stratus_host_heartbeat_age_seconds",
        "stratus_heartbeat_age_max_seconds",
        "stratus_placement_latency_seconds",
        "stratus_failure_detection_seconds",
        "stratus_recovery_seconds",
        "stratus_requests",
        "stratus_vm_transitions",
        "stratus_network_addresses_used",
        "stratus_network_addresses_total",
        "stratus_migrations_in_flight",
    } <= names


def test_the_grafana_dashboard_uses_only_metrics_the_scheduler_exports() -> None:
    kit = ObservedKit()
    metrics = SchedulerMetrics(kit).attach()  # type: ignore[arg-type]
    kit.heartbeat("h1")
    kit.vnet("front", "10.1.0.0/24")
    kit.create("a", nics=[NicRequest(vnet="front")])
    exported = {
        sample.name
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }
    dashboard = json.loads((REPO / "deploy" / "grafana" / "stratus.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bstratus_[a-z_]+", expr)}
    assert used and used <= exported, used - exported


def test_migrations_are_counted_by_outcome_and_cause_and_in_flight() -> None:
    kit = ObservedKit()
    metrics = SchedulerMetrics(kit).attach()  # type: ignore[arg-type]
    for host in ("h1", "h2", "h3"):
        beat(kit, host, [])
    running_vm(kit, "a", "h1")
    running_vm(kit, "b", "h1")
    assert migrate(kit, "a", "h2").error is None
    assert migrate(kit, "b", "h3").error is None
    assert value(metrics, "stratus_migrations_in_flight") == 2
    beat(kit, "h2", [incoming("a", 2, "h1", MigrationStatus.READY)])
    beat(kit, "h1", [handed_over("a", 1, 2, "h2"), vm_at("b", 1, ObservedState.RUNNING)])
    beat(kit, "h2", [vm_at("a", 2, ObservedState.RUNNING)])
    beat(kit, "h3", [incoming("b", 2, "h1", MigrationStatus.FAILED)])
    started = value(metrics, "stratus_migrations_total", outcome="started", cause="request")
    succeeded = value(metrics, "stratus_migrations_total", outcome="succeeded", cause="request")
    failed = value(metrics, "stratus_migrations_total", outcome="failed", cause="request")
    assert (started, succeeded, failed) == (2, 1, 1)
    assert value(metrics, "stratus_migrations_in_flight") == 0
