"""An unchanged heartbeat costs a lookup and a timestamp; everything else a report may say is
still taken in (scheduler/core/hosts.py ``_unchanged``)."""

from __future__ import annotations

from typing import Any

import pytest

from common.ids import HostId
from common.messages import DeleteVm, Heartbeat, VmRef
from common.replica_messages import ConfigureReplicas
from common.resources import Resources
from hostagent.report import InventoryReport
from scheduler.core.contract import Op
from scheduler.state.model import HostRecord
from tests.unit.scheduler.corekit import CoreKit, acks, commands

HOST = HostId("h1")
CHANGED: dict[str, Any] = {
    "region": "other-region",
    "fault_domain": "fd-9",
    "capacity": Resources(4000, 8192),
    "labels": {"gpu": "yes"},
    "cpu_overcommit": 2.0,
    "driver": "qemu",
    "underlay_ip": "10.9.9.9",
    "replica_port": 7799,
    "disk_capacity_mib": 4096,
}
"""A new value for each field a heartbeat reports into the host's record."""
NOT_FROM_A_REPORT = {"host_id", "boot_id"}
"""Record fields a heartbeat names but that a steady one cannot change: another host id is
another host, another boot is another agent (scheduler/core/hosts.py ``_claim_refusal``)."""


def steady_host(**report: Any) -> tuple[CoreKit, InventoryReport]:
    """A host running two VMs, settled: its next heartbeats leave their inventory out."""
    kit = CoreKit()
    agent = InventoryReport()
    kit.heartbeat(HOST, report=agent, **report)
    kit.create("a")
    kit.create("b")
    for _ in range(2):  # running, then reconciled as right
        kit.heartbeat(HOST, kit.running_on(HOST), report=agent, **report)
    kit.heartbeat(HOST, kit.running_on(HOST), report=agent, **report)
    assert kit.state.runtimes[HOST].settled
    return kit, agent


def test_an_unchanged_heartbeat_renews_the_lease_and_keeps_the_host_alive() -> None:
    kit, agent = steady_host()
    for _ in range(20):  # 20 s, well past dead_after_s
        kit.t += 1.0
        actions = kit.heartbeat(HOST, kit.running_on(HOST), report=agent)
        [ack] = acks(actions)
        assert ack.ack.seq == kit.seqs[HOST] and ack.ack.host_id == HOST
        assert ack.ack.inventory_digest == agent.held != ""  # the inventory stays left out
        assert ack.ack.fence_after_s == 4.0 and ack.ack.refused == ""
        assert len(actions) == 1  # nothing else: no command, no event
        assert not kit.result.vms and not kit.result.hosts  # nothing to store
        kit.step()
        kit.advance(0.0)  # a tick: liveness judged now
    assert kit.host(HOST).up
    assert kit.state.runtimes[HOST].last_seen_s == kit.t
    assert all(vm.state.value == "running" for vm in kit.state.vms.values())


def test_a_host_that_goes_silent_after_steady_heartbeats_is_declared_dead() -> None:
    kit, agent = steady_host()
    kit.t += 1.0
    kit.heartbeat(HOST, kit.running_on(HOST), report=agent)
    kit.advance(7.0)  # past dead_after_s (6 s) without a heartbeat
    assert not kit.host(HOST).up


def test_every_field_a_heartbeat_reports_into_the_host_record_is_compared() -> None:
    reported = set(HostRecord.__struct_fields__) & set(Heartbeat.__struct_fields__)
    assert reported - NOT_FROM_A_REPORT == set(CHANGED)  # a new one: add it to CHANGED


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_a_changed_field_in_a_steady_heartbeat_is_taken_in(field: str) -> None:
    kit, agent = steady_host()
    kit.t += 1.0
    kit.heartbeat(HOST, kit.running_on(HOST), report=agent, **{field: CHANGED[field]})
    assert getattr(kit.host(HOST), field) == CHANGED[field]
    assert [h.host_id for h in kit.result.hosts] == [HOST]  # stored


def test_a_fenced_report_in_a_steady_heartbeat_is_taken_in() -> None:
    kit, agent = steady_host()
    kit.t += 1.0
    kit.heartbeat(HOST, kit.running_on(HOST), report=agent, fenced=True)
    assert kit.core.host_info(kit.host(HOST).host_id, kit.now()).fenced


def test_a_vm_changed_by_the_scheduler_is_reconciled_at_the_next_steady_heartbeat() -> None:
    kit, agent = steady_host()
    kit.mutate(Op.DELETE, VmRef(name="a"))
    assert [type(c) for c in commands(kit.actions, HOST)] == [DeleteVm]
    kit.t += kit.config.command_retry_s  # the delete was lost: the agent still runs it
    actions = kit.heartbeat(HOST, kit.running_on(HOST), report=agent)
    assert [type(c) for c in commands(actions, HOST)] == [DeleteVm]


def test_a_replica_set_reported_other_than_wanted_in_a_steady_heartbeat_is_corrected() -> None:
    kit, agent = steady_host()
    kit.t += 1.0
    actions = kit.heartbeat(HOST, kit.running_on(HOST), report=agent, replica_digest="0" * 16)
    [configure] = commands(actions, HOST)
    assert isinstance(configure, ConfigureReplicas) and configure.replicas == []


def test_after_a_restart_a_host_as_the_records_say_is_settled_by_its_first_report() -> None:
    kit, agent = steady_host()
    kit.t += 30.0
    kit.restart(reload=True)
    actions = kit.heartbeat(HOST, kit.running_on(HOST), report=agent)
    [ack] = acks(actions)
    assert ack.ack.inventory_digest == agent.held != ""  # held: the next reports leave it out
    assert commands(actions) == [] and not kit.result.vms
    assert kit.state.runtimes[HOST].settled and HOST not in kit.state.touched_hosts
    kit.t += 1.0
    assert len(kit.heartbeat(HOST, kit.running_on(HOST), report=agent)) == 1  # steady: an ack


def test_after_a_restart_a_vm_changed_since_is_still_reconciled() -> None:
    kit, agent = steady_host()
    kit.t += 30.0
    kit.restart(reload=True)
    kit.mutate(Op.DELETE, VmRef(name="a"))  # before the host's first report to the new term
    kit.t += kit.config.command_retry_s  # the delete was lost: the agent still runs it
    actions = kit.heartbeat(HOST, kit.running_on(HOST), report=agent)
    assert [type(c) for c in commands(actions, HOST)] == [DeleteVm]
