"""Hostile and malformed input on every NATS subject the scheduler and the agents listen on.

Thousands of hypothesis-generated and mutated messages go to the API (request/reply and without
a reply inbox), the jobs stream, the heartbeat subjects and the agents' command subjects of a
real nats-server, an in-process scheduler and two agent processes. Every request gets the typed
reply of its subject (never an internal error, never silence); nothing dies; state stays
consistent while it runs (no host's allocations above its capacity) and after (every job acked,
the agents hold exactly what the scheduler placed on them, no VM ever executed on two hosts).

``STRATUS_FUZZ_CASES`` sets the number of cases (default 5,000; the long mode runs 100,000 and
more: ``STRATUS_FUZZ_CASES=100000 pytest tests/fuzz -s`` prints the counts).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from common import codec, messages as m, subjects
from common.natsserver import NatsServer
from tests.fuzz.cases import Case, cases
from tests.fuzz.harness import FuzzTarget

pytestmark = pytest.mark.integration

CASES = int(os.environ.get("STRATUS_FUZZ_CASES", "5000"))
BATCH = 40
"""Most cases sent at once (concurrently) per hypothesis example."""
HOSTS = ("fza", "fzb")
SETTLED = {m.VmState.RUNNING, m.VmState.STOPPED, m.VmState.PENDING, m.VmState.FAILED}


@pytest.fixture
def target(nats_server: NatsServer, tmp_path: Path) -> Iterator[FuzzTarget]:
    fuzz = FuzzTarget(nats_server, tmp_path, HOSTS)
    try:
        fuzz.start()
        yield fuzz
    finally:
        fuzz.stop()


def capacity_violations(target: FuzzTarget) -> list[str]:
    hosts = codec.host_list_reply.decode(target.request(subjects.HOST_LIST)).hosts
    ratio = target.config.cpu_overcommit
    return [
        f"{h.host_id} allocated {h.allocated} > capacity {h.capacity}"
        for h in hosts
        if h.allocated.mem_mib > h.capacity.mem_mib
        or h.allocated.cpu_milli > h.capacity.cpu_milli * ratio
    ]


def divergence(vms: list[m.VmInfo], heartbeats: dict[str, m.Heartbeat]) -> list[str]:
    """Differences between the scheduler's placements and what the agents hold and run."""
    problems = [f"{vm.name} still {vm.state}" for vm in vms if vm.state not in SETTLED]
    running = [vm for vm in vms if vm.state is m.VmState.RUNNING]
    problems += [
        f"{vm.name} running on unknown host {vm.host}" for vm in running if vm.host not in HOSTS
    ]
    placed = {(vm.host, vm.name, vm.generation) for vm in running}
    held = {
        (host, vm.name, vm.generation)
        for host, hb in heartbeats.items()
        for vm in hb.vms
        if vm.state is m.ObservedState.RUNNING
    }
    problems += [f"placed but not running: {p}" for p in sorted(placed - held, key=str)]
    ours = {(vm.host, vm.name) for vm in vms}
    problems += [
        f"held by {host} but not placed there: {vm.name}"
        for host, hb in heartbeats.items()
        for vm in hb.vms
        if (host, vm.name) not in ours
    ]
    return problems


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_hostile_input_on_every_subject(target: FuzzTarget) -> None:
    target.wait(lambda: set(target.heartbeats) == set(HOSTS), timeout_s=20)

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        phases=(Phase.generate,),  # no shrinking: the failing batch is printed as drawn
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=st.lists(cases(HOSTS), min_size=1, max_size=BATCH))
    def fuzz(batch: list[Case]) -> None:
        target.send(batch)
        assert not target.alive(), target.alive()
        assert not capacity_violations(target), capacity_violations(target)

    while target.stats.total < CASES:  # each run draws fresh examples
        fuzz()
    print(target.stats.summary())  # the long mode's report (pytest -s)

    # After the storm: still alive, every job acked, the agents hold what was placed.
    assert not target.alive(), target.alive()

    async def jobs_done() -> bool:
        info = await target.nc.jetstream().consumer_info(
            subjects.JOBS_STREAM, subjects.JOBS_CONSUMER
        )
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    target.wait(jobs_done, timeout_s=60)
    last: list[str] = []

    async def converged() -> bool:
        vms = codec.vm_list_reply.decode(await target.ask(subjects.VM_LIST)).vms
        last[:] = divergence(vms, dict(target.heartbeats))
        return not last

    try:
        target.wait(converged, timeout_s=60)
    except AssertionError as exc:
        raise AssertionError(f"no convergence: {last}") from exc
    assert not capacity_violations(target)
    assert target.overlaps() == []
