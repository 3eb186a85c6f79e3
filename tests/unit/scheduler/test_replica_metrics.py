"""Replica metrics: degraded VMs and copies being made at scrape time, new copies counted from
the events of committed steps."""

from __future__ import annotations

from common.messages import DiskStorage
from scheduler.core.contract import Action, Input
from scheduler.shell.metrics import Observer, SchedulerMetrics
from scheduler.state.cluster import ClusterState
from tests.unit.scheduler.replkit import ReplicaKit
from tests.unit.scheduler.test_metrics import KitClock, value


class ObservedReplicaKit(ReplicaKit):
    def __init__(self) -> None:
        self.observers: list[Observer] = []
        super().__init__()
        self.clock = KitClock(self)

    def committed(self) -> ClusterState | None:
        return self.state

    def step(self, *inputs: Input) -> list[Action]:
        actions = super().step(*inputs)
        for observe in self.observers:
            observe(actions, lambda token: "nats")
        return actions


def test_a_lost_copy_shows_as_degraded_then_rebuilt() -> None:
    kit = ObservedReplicaKit()
    metrics = SchedulerMetrics(kit).attach()  # type: ignore[arg-type]
    for host, domain in (("h1", "fd-a"), ("h2", "fd-b"), ("h3", "fd-c")):
        kit.add_host(host, domain, capacity_mib=100_000)
    kit.create("web", storage=DiskStorage.REPLICATED, data_disks_mib=[1024])
    for _ in range(3):
        kit.beat_all()
    assert value(metrics, "stratus_replicated_vms", copies="2") == 1
    assert value(metrics, "stratus_region_disk_used_mib", region="local") == 2 * (1024 + 1024)
    host = str(kit.vm("web").host)
    [other] = [h for h in kit.copies("web")[0] if h != host]
    kit.held_back["h1"] = kit.held_back["h2"] = kit.held_back["h3"] = {
        d.disk_id for d in kit.vm("web").disks
    }
    kit.kill(other)
    for _ in range(8):
        kit.advance(1.0)
        kit.beat_all()
    assert value(metrics, "stratus_replica_rebuilds_total", outcome="started") == 2
    assert value(metrics, "stratus_replica_copies_making") == 2
    assert value(metrics, "stratus_replicated_vms", copies="1") == 1  # degraded
    kit.held_back = {}
    kit.beat_all()
    kit.join("web")
    kit.beat_all()
    assert value(metrics, "stratus_replica_rebuilds_total", outcome="current") == 2
    assert value(metrics, "stratus_replica_copies_making") == 0
    assert value(metrics, "stratus_replicated_vms", copies="2") == 1
