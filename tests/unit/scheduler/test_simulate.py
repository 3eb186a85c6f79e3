"""The trace replay: hosts in use against the lower bound, rejections, the rebalancer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from common.config import RebalanceConfig, SchedulerConfig
from common.resources import Resources
from scheduler.placement.simulate import (
    SimPolicy,
    TraceVm,
    equal_hosts,
    hosts_needed,
    migration_s,
    peak_lower_bound,
    read_alibaba_hosts,
    read_alibaba_pods,
    read_azure,
    simulate,
    stranded,
)

HOST = Resources(4000, 8192)
SLICE = Path(__file__).resolve().parents[2] / "data" / "azure-2017-slice.csv"


def _vm(
    vm_id: str, arrival_s: float, departure_s: float | None, cpu: int, batch: str = "b"
) -> TraceVm:
    return TraceVm(vm_id, arrival_s, departure_s, batch, Resources(cpu, cpu * 2))


def test_hosts_in_use_are_integrated_over_trace_time() -> None:
    # Two half-host VMs for 100 s share one host; then one leaves and the other stays 100 s more.
    vms = [_vm("a", 0, 100, 2000), _vm("b", 0, 200, 2000), _vm("end", 200, None, 0)]
    result, _ = simulate(vms, equal_hosts(3, HOST), SimPolicy.plain(), bound_capacity=HOST)
    assert (result.placed, result.rejected, result.peak_hosts) == (3, 0, 1)
    assert result.peak_lower_bound == 1.0
    assert result.host_seconds == 200.0
    assert result.lower_bound_seconds == 100 * 1.0 + 100 * 0.5
    assert result.time_averaged_ratio == pytest.approx(200 / 150)
    assert result.vm_seconds == 2 * 100 + 1 * 100


def test_spread_uses_more_hosts_and_a_full_fleet_rejects() -> None:
    vms = [_vm(str(n), n, None, 2000) for n in range(4)]
    spread, _ = simulate(vms, equal_hosts(4, HOST), SimPolicy.plain("spread"), bound_capacity=HOST)
    assert spread.peak_hosts == 4
    binpack, _ = simulate(vms, equal_hosts(1, HOST), SimPolicy.plain(), bound_capacity=HOST)
    assert (binpack.placed, binpack.rejected) == (2, 2)


def test_the_default_replay_is_the_schedulers_default_configuration() -> None:
    defaults = SchedulerConfig()
    assert SimPolicy() == SimPolicy(defaults.scorer, rebalance=defaults.rebalance)
    assert SimPolicy().rebalance.enabled


def _consolidating(**knobs: float | str) -> SimPolicy:
    """The rebalancer with a round every 100 s and ``knobs``."""
    config = msgspec.structs.replace(RebalanceConfig(interval_s=100.0), **knobs)
    return SimPolicy("binpack", rebalance=config)


# a and b fill host 0, c goes to host 1; a leaves at 10, so c can move into its place at the
# round at 100; its migration takes 10 s + 2000 MiB at 0.5 GiB/s.
FREEABLE = [
    _vm("a", 0, 10, 2000),
    _vm("b", 0, None, 2000),
    _vm("c", 1, None, 1000),
    _vm("late", 1000, None, 0),
]
LANDS_S = 100 + migration_s(Resources(1000, 2000))


def test_the_rebalancer_frees_a_lightly_used_host_and_the_migration_holds_both_hosts() -> None:
    result, final = simulate(FREEABLE, equal_hosts(3, HOST), _consolidating(), bound_capacity=HOST)
    assert (result.migrations, result.vms_migrated) == (1, 1)
    assert [view.allocated for view in final[:2]] == [Resources(3000, 6000), Resources()]
    # Host 1 stays in use until the migration lands, not just until the round.
    assert result.host_seconds == pytest.approx(1000 + (LANDS_S - 1))
    plain, _ = simulate(FREEABLE, equal_hosts(3, HOST), SimPolicy.plain(), bound_capacity=HOST)
    assert plain.migrations == 0
    assert result.host_seconds < plain.host_seconds
    assert result.migrations_per_vm_hour == pytest.approx(1 / (result.vm_seconds / 3600))


def test_a_vm_leaving_mid_migration_frees_both_hosts() -> None:
    vms = [*FREEABLE[:2], _vm("c", 1, 105, 1000), _vm("late", 1000, None, 0)]
    result, final = simulate(vms, equal_hosts(3, HOST), _consolidating(), bound_capacity=HOST)
    assert result.migrations == 1
    assert [view.allocated for view in final[:2]] == [Resources(2000, 4000), Resources()]
    assert result.host_seconds == pytest.approx(1000 + (105 - 1))


def test_the_hourly_bound_and_the_switch_hold_in_the_replay() -> None:
    bounded, _ = simulate(FREEABLE, equal_hosts(3, HOST), _consolidating(max_migrations_per_hour=0))
    off = replace(_consolidating(), rebalance=RebalanceConfig(enabled=False))
    switched_off, _ = simulate(FREEABLE, equal_hosts(3, HOST), off)
    assert bounded.migrations == switched_off.migrations == 0


def test_the_rebalancer_moves_nothing_when_a_host_cannot_be_freed() -> None:
    vms = [_vm("a", 0, None, 3000), _vm("b", 0, None, 3000), _vm("late", 1000, None, 0)]
    policy = _consolidating(empty_below=0.9)
    result, final = simulate(vms, equal_hosts(2, HOST), policy, bound_capacity=HOST)
    assert result.migrations == 0
    assert [view.allocated.cpu_milli for view in final] == [3000, 3000]


def test_the_rebalancer_makes_room_before_a_large_vm_comes_so_it_opens_no_host() -> None:
    # a + b and c leave 1 core free on each of two hosts; the round at 100 moves b next to c,
    # so "big" (2 cores) arriving at 1000 fits on host 0 instead of opening a third host.
    vms = [_vm("a", 0, None, 2000), _vm("b", 0, None, 1000), _vm("c", 0, None, 3000)]
    vms.append(_vm("big", 1000, None, 2000))
    room: dict[str, float | str] = {"room_for": "2c/4000m", "room_hosts": 1}
    made, final = simulate(vms, equal_hosts(3, HOST), _consolidating(**room), bound_capacity=HOST)
    assert (made.peak_hosts, made.migrations, made.busiest_hour_migrations) == (2, 1, 1)
    assert [view.allocated.cpu_milli for view in final] == [4000, 4000, 0]
    none = {**room, "room_hosts": 0}
    opened, _ = simulate(vms, equal_hosts(3, HOST), _consolidating(**none), bound_capacity=HOST)
    assert (opened.peak_hosts, opened.migrations) == (3, 0)


def test_batches_stay_together_when_asked() -> None:
    vms = [_vm("x", 0, None, 1000, batch="one"), _vm("y", 0, None, 1000, batch="two")]
    vms.append(_vm("x2", 1, None, 1000, batch="one"))
    policy = replace(SimPolicy.plain("spread"), group_batches=True)
    _, final = simulate(vms, equal_hosts(3, HOST), policy)
    assert sorted(view.allocated.cpu_milli for view in final) == [0, 1000, 2000]


def test_azure_slice_replays_with_a_documented_lifetime_rule() -> None:
    with SLICE.open() as fh:
        vms = read_azure(fh)
    assert len(vms) == 400
    first = vms[0]
    assert (first.arrival_s, first.resources, first.departure_s) == (
        1_800_000,
        Resources(8000, 14336),
        1_800_300,
    )
    capacity = Resources(64000, 262144)
    count = hosts_needed(vms, capacity)
    assert count > peak_lower_bound(vms, capacity)
    result, _ = simulate(vms, equal_hosts(count, capacity), SimPolicy(), bound_capacity=capacity)
    assert result.migrated_fraction <= 0.05
    assert result.rejected == 0 and result.placed == 400
    assert result.peak_hosts >= result.peak_lower_bound


def test_alibaba_readers_and_stranded_capacity() -> None:
    hosts = read_alibaba_hosts(["sn,cpu_milli,memory_mib,gpu,model", "n0,8000,16384,0,", ""])
    pods = read_alibaba_pods(
        [
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
            "creation_time,deletion_time,scheduled_time",
            "p0,6000,4096,0,0,,LS,Running,0,50,0",
            "p1,1000,1024,0,0,,LS,Pending,5,,",
        ]
    )
    assert [p.departure_s for p in pods] == [50.0, None]
    _, final = simulate(pods, hosts, SimPolicy.plain())
    assert final[0].free == Resources(1000, 11264)
    # A 2c/2g request cannot use the 11 GiB free there: the CPU is gone.
    assert stranded(final, Resources(2000, 2048)) == Resources(0, 11264)
