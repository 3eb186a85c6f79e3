"""Usage metering: hours held, per started clock hour, from the VM event history.

Two kinds of test: hand-written histories (table-driven), and histories the real core emits
while a fake clock crosses hour boundaries, hosts die and the scheduler restarts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from common.config import SchedulerConfig
from common.messages import VmEvent, VmRef, VmState
from scheduler.core.contract import Action, Input, Op
from scheduler.core.step import SchedulerCore
from scheduler.core.usage import floor_hour, held_periods, usage_report
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostRecord, VmRecord
from tests.unit.scheduler.corekit import EPOCH, CoreKit, vm_events

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
PRICES = {"Small": 0.06, "Large": 0.24}
S = VmState


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def history(*steps: tuple[float, VmState, str | None]) -> list[VmEvent]:
    """Events of VM ``a`` (size Small): (minutes after 10:00, state, host)."""
    return [
        VmEvent(seq=i, time=at(m), name="a", state=s, host=h, generation=1, size="Small")
        for i, (m, s, h) in enumerate(steps, 1)
    ]


def billed(events: list[VmEvent], until_min: float, since: datetime | None = None) -> int:
    report = usage_report(events, since=since, until=at(until_min), prices=PRICES)
    return report.hours


CASES = {
    "placed-10:30-deleted-11:10-is-two-started-hours": (
        history((30, S.SCHEDULED, "h1"), (31, S.RUNNING, "h1"), (70, S.DELETED, None)),
        300,
        2,
    ),
    "exactly-one-clock-hour-is-one-hour": (
        history((0, S.SCHEDULED, "h1"), (60, S.DELETED, None)),
        300,
        1,
    ),
    "one-second-is-a-started-hour": (
        history((0, S.SCHEDULED, "h1"), (1 / 60, S.FAILED, None)),
        300,
        1,
    ),
    "stop-and-start-within-the-hour-is-billed-once": (
        history(
            (5, S.SCHEDULED, "h1"),
            (20, S.STOPPING, "h1"),
            (21, S.STOPPED, None),
            (40, S.PENDING, None),
            (40, S.SCHEDULED, "h2"),
            (50, S.DELETED, None),
        ),
        300,
        1,
    ),
    "stopped-deallocated-hours-are-free": (
        history(
            (10, S.SCHEDULED, "h1"),
            (20, S.STOPPED, None),
            (170, S.SCHEDULED, "h1"),
            (190, S.DELETED, None),
        ),
        300,
        3,  # 10:xx, 12:xx, 13:xx; not 11:xx
    ),
    "never-placed-is-free": (
        history((0, S.PENDING, None), (30, S.STOPPED, None)),
        300,
        0,
    ),
    "still-running-is-billed-up-to-until": (
        history((59, S.SCHEDULED, "h1"), (60, S.RUNNING, "h1")),
        150,
        3,  # 10:59 .. 12:30
    ),
    "lost-with-its-host-and-replaced-in-the-same-hour-is-not-billed-twice": (
        history(
            (5, S.SCHEDULED, "h1"),
            (6, S.RUNNING, "h1"),
            (50, S.LOST, "h1"),
            (50, S.PENDING, None),
            (51, S.SCHEDULED, "h2"),
            (52, S.RUNNING, "h2"),
        ),
        90,
        2,
    ),
}


@pytest.mark.parametrize(("events", "until_min", "hours"), CASES.values(), ids=CASES.keys())
def test_billed_hours(events: list[VmEvent], until_min: float, hours: int) -> None:
    assert billed(events, until_min) == hours


def test_seconds_held_exclude_stopped_time_and_periods_follow_hosts() -> None:
    events = history(
        (10, S.SCHEDULED, "h1"), (20, S.STOPPED, None), (30, S.SCHEDULED, "h2"), (45, S.LOST, "h2")
    )
    [vm] = usage_report(events, since=None, until=at(120), prices=PRICES).vms
    assert vm.held_s == 25 * 60
    periods = held_periods(events, at(120).timestamp())
    assert [(p.start_s - T0.timestamp(), p.end_s - T0.timestamp()) for p in periods] == [
        (600, 1200),
        (1800, 2700),
    ]


def test_duplicate_and_unordered_events_count_once() -> None:
    events = history((5, S.SCHEDULED, "h1"), (30, S.RUNNING, "h1"), (70, S.DELETED, None))
    again = [*reversed(events), *events]
    assert usage_report(again, since=None, until=at(300), prices=PRICES) == usage_report(
        events, since=None, until=at(300), prices=PRICES
    )


def test_hour_aligned_windows_partition_the_usage() -> None:
    events = history(
        (30, S.SCHEDULED, "h1"),
        (40, S.STOPPED, None),
        (130, S.SCHEDULED, "h1"),
        (190, S.LOST, "h1"),
    )
    whole = billed(events, 300, since=T0)
    parts = [
        usage_report(events, since=at(60 * k), until=at(60 * (k + 1)), prices=PRICES).hours
        for k in range(5)
    ]
    assert parts == [1, 0, 1, 1, 0]  # 10:30-10:40, then 12:10-13:10
    assert whole == sum(parts) == 3
    assert billed(events, 300, since=at(125)) == 2  # since is rounded down to 12:00


def test_prices_per_vm_and_per_size_with_unknown_sizes_free() -> None:
    events = [
        VmEvent(
            seq=1, time=at(0), name="a", state=S.SCHEDULED, host="h", generation=1, size="Small"
        ),
        VmEvent(
            seq=2, time=at(0), name="b", state=S.SCHEDULED, host="h", generation=1, size="Large"
        ),
        VmEvent(
            seq=3, time=at(0), name="c", state=S.SCHEDULED, host="h", generation=1, size="Large"
        ),
        VmEvent(seq=4, time=at(0), name="old", state=S.SCHEDULED, host="h", generation=1),
        VmEvent(seq=5, time=at(0), name="odd", state=S.SCHEDULED, host="h", generation=1, size="X"),
    ]
    report = usage_report(events, since=None, until=at(90), prices=PRICES, sizes={"old": "Small"})
    by_name = {vm.name: (vm.size, vm.hours, vm.cost) for vm in report.vms}
    assert by_name == {
        "a": ("Small", 2, 0.12),
        "b": ("Large", 2, 0.48),
        "c": ("Large", 2, 0.48),
        "old": ("Small", 2, 0.12),  # an event from before sizes were recorded
        "odd": ("X", 2, 0.0),
    }
    assert [(s.size, s.vms, s.hours, s.cost) for s in report.sizes] == [
        ("Large", 2, 4, 0.96),
        ("Small", 2, 4, 0.24),
        ("X", 1, 2, 0.0),
    ]
    assert (report.hours, report.cost) == (10, 1.2)
    assert report.since == T0 and report.until == at(90)


def test_config_prices_override_the_defaults_per_size() -> None:
    config = msgspec.convert({"prices": {"Small": 1.5}}, SchedulerConfig)
    table = config.price_table()
    assert table["Small"] == 1.5 and table["Large"] == 0.24 and table["A7"] == 1.0
    assert floor_hour(at(59.9)) == T0


# --------------------------------------------------------------------------- the real core


class MeteredKit(CoreKit):
    """CoreKit that keeps every VM event the core emits, as the store's vm_history does."""

    def __init__(self) -> None:
        self.history: list[VmEvent] = []
        super().__init__()

    def step(self, *inputs: Input) -> list[Action]:
        actions = super().step(*inputs)
        self.history.extend(vm_events(actions))
        return actions

    def jump(self, seconds: float, *hosts: str) -> None:
        """Let time pass while ``hosts`` keep heartbeating (their VMs running)."""
        self.t += seconds
        for host in hosts:
            self.heartbeat(host, self.running_on(host))
        self.advance(0.1)

    def restart_after(self, downtime_s: float) -> None:
        """A new scheduler process: state reloaded from the store, event numbering continued."""
        vms = [msgspec.convert(msgspec.to_builtins(r), VmRecord) for r in self.state.vms.values()]
        hosts = [
            msgspec.convert(msgspec.to_builtins(h), HostRecord) for h in self.state.hosts.values()
        ]
        self.state = ClusterState.from_records(vms, hosts, {})
        self.core = SchedulerCore(
            self.config, self.state, scheduler_id="again", event_seq=self.core.event_seq
        )
        self.t += downtime_s
        self.core.start(self.now())

    def usage_hours(self) -> dict[str, int]:
        report = usage_report(
            self.history, since=None, until=self.now().wall, prices=self.config.price_table()
        )
        return {vm.name: vm.hours for vm in report.vms}


def test_core_history_vm_replaced_after_host_death_pays_each_hour_once() -> None:
    kit = MeteredKit()
    kit.heartbeat("h1", fault_domain="fd-0")
    kit.heartbeat("h2", fault_domain="fd-1")
    kit.jump(1800, "h1", "h2")  # 00:30
    kit.create("a", "Large")
    home = kit.vm("a").host
    assert home is not None
    other = "h2" if home == "h1" else "h1"
    kit.jump(1, "h1", "h2")
    kit.jump(1200, "h1", "h2")  # 00:50: then the home host goes silent
    for _ in range(7):
        kit.jump(1, other)
    assert not kit.host(home).up and kit.vm("a").host == other
    kit.jump(1, other)
    assert kit.vm("a").state is VmState.RUNNING
    kit.jump(1800, other)  # 01:20
    kit.mutate(Op.DELETE, VmRef(name="a"))
    kit.heartbeat(other, [])
    kit.jump(7200, other)
    states = [e.state for e in kit.history if e.name == "a"]
    assert VmState.LOST in states and states[-1] is VmState.DELETED
    assert kit.usage_hours() == {"a": 2}  # 00:xx and 01:xx, not 00:xx twice
    assert EPOCH.hour == 0


def test_core_history_stopped_vm_is_not_billed_while_deallocated() -> None:
    kit = MeteredKit()
    kit.heartbeat("h1")
    kit.create("a", "Small")
    kit.jump(600, "h1")  # 00:10
    kit.mutate(Op.STOP, VmRef(name="a"))
    kit.heartbeat("h1", [])
    assert kit.vm("a").state is VmState.STOPPED
    kit.jump(5 * 3600, "h1")  # 05:10: five hours stopped
    kit.mutate(Op.START, VmRef(name="a"))
    kit.jump(60, "h1")  # 05:11, running until now
    assert kit.usage_hours() == {"a": 2}  # 00:xx and 05:xx


def test_core_history_across_a_scheduler_restart_bills_the_downtime_once() -> None:
    kit = MeteredKit()
    kit.heartbeat("h1")
    kit.jump(2400, "h1")  # 00:40
    kit.create("a", "Small")
    kit.jump(1, "h1")
    before = len(kit.history)
    kit.restart_after(downtime_s=1800)  # down 00:40 .. 01:10; the VM keeps running on its host
    kit.jump(1, "h1")
    assert kit.vm("a").state is VmState.RUNNING and kit.host("h1").up
    kit.history.extend(kit.history[before - 2 : before])  # the outbox republished these
    kit.jump(3600, "h1")  # 02:10
    seqs = [e.seq for e in kit.history]
    assert len(set(seqs)) < len(seqs)
    assert kit.usage_hours() == {"a": 3}  # 00, 01, 02


def test_a_window_after_until_is_empty_and_year_one_is_clamped() -> None:
    events = history((5, S.SCHEDULED, "h1"))
    future = usage_report(events, since=at(120), until=at(90), prices=PRICES)
    assert (future.vms, future.hours, future.since, future.until) == ([], 0, at(120), at(120))
    ancient = usage_report(events, since=datetime(1, 1, 1, tzinfo=UTC), until=at(90), prices=PRICES)
    assert ancient.hours == 2 and ancient.since.year == 1970
