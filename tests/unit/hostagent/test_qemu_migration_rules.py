"""The QEMU driver's migration rules that need no QEMU: how long each phase may take, where the
state is sent, which VM may be sent, and what a repeated or bad ``prepare_incoming`` gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import DriverError
from common.messages import ObservedState, VmSpec
from hostagent.drivers.base import IncomingEndpoint
from hostagent.drivers.qemuflows import (
    BASE_S,
    FIRST_DOWNTIME_MS,
    FLOOR_MIB_S,
    Arrival,
    Outgoing,
    deadlines,
    downtime_limit_ms,
    uri,
)
from hostagent.drivers.qemumigrate import _check_can_send, _listen_address, _same_attempt
from hostagent.drivers.qemuproc import VmFiles
from hostagent.drivers.qemuvm import QemuVm

TARGET = IncomingEndpoint("10.0.0.2", 4000, 20001)


def outgoing(disk_mib: int = 0, mem_mib: int = 0, cap_mib_s: int = 0) -> Outgoing:
    return Outgoing(TARGET, ["d-os"], disk_mib, mem_mib, 100, cap_mib_s)


def vm(tmp_path: Path, **fields: object) -> QemuVm:
    spec = VmSpec(name="v", size="Tiny", cpu_milli=1000, mem_mib=96, image="tiny")
    held = QemuVm(spec, 3, VmFiles(tmp_path), booted=True)
    for name, value in fields.items():
        setattr(held, name, value)
    return held


def test_waits_grow_with_what_there_is_to_send_and_with_a_bandwidth_cap() -> None:
    assert deadlines(outgoing()) == (BASE_S, BASE_S)
    disks_s, memory_s = deadlines(outgoing(disk_mib=800, mem_mib=1024))
    assert disks_s == BASE_S + 800 / FLOOR_MIB_S
    assert memory_s == BASE_S + 4 * 1024 / FLOOR_MIB_S, "pre-copy may take several passes"
    capped_disks_s, _ = deadlines(outgoing(disk_mib=800, cap_mib_s=2))
    assert capped_disks_s == BASE_S + 800, "a 2 MiB/s cap is given time at 1 MiB/s"


def test_the_state_goes_to_the_address_as_qemu_spells_it() -> None:
    assert uri("10.0.0.2", 4000) == "tcp:10.0.0.2:4000"
    assert uri("fd00::2", 4000) == "tcp:[fd00::2]:4000"


def test_a_failed_disk_copy_is_remembered_and_wakes_the_waits() -> None:
    out = outgoing()
    out.notice("BLOCK_JOB_COMPLETED", {"device": "mig-job-0", "len": 5, "offset": 5})
    assert out.job_errors == {} and out.changed.is_set()
    out.changed.clear()
    out.notice("BLOCK_JOB_COMPLETED", {"device": "mig-job-0", "error": "Connection reset"})
    assert out.job_errors == {"mig-job-0": "Connection reset"} and out.changed.is_set()
    out.cancel()
    assert out.cancelled


@pytest.mark.parametrize(
    ("max_ms", "passes", "expected"),
    [
        (100, 0, FIRST_DOWNTIME_MS),
        (100, 2, FIRST_DOWNTIME_MS),
        (100, 3, 2 * FIRST_DOWNTIME_MS),
        (100, 4, 4 * FIRST_DOWNTIME_MS),
        (100, 5, 100),
        (100, 10_000, 100),
        (5, 0, 5),
    ],
    ids=["start", "second-pass", "third", "fourth", "capped", "many-passes", "small-max"],
)
def test_qemu_plans_a_short_last_round_first_and_the_whole_allowance_later(
    max_ms: int, passes: int, expected: int
) -> None:
    assert downtime_limit_ms(max_ms, passes) == expected


def test_the_migration_events_are_remembered_and_wake_the_waits() -> None:
    out = outgoing()
    out.notice("MIGRATION_PASS", {"pass": 3})
    out.notice("MIGRATION", {"status": "pre-switchover"})
    assert (out.passes, out.status) == (3, "pre-switchover") and out.changed.is_set()
    arrival = Arrival()
    arrival.notice("RESUME", {})
    assert (arrival.status, arrival.changed.is_set()) == ("", False)
    arrival.notice("MIGRATION", {"status": "completed"})
    assert (arrival.status, arrival.changed.is_set()) == ("completed", True)


def test_the_listen_address_must_be_an_ip_address() -> None:
    assert _listen_address("10.0.0.2") == "10.0.0.2"
    assert _listen_address("fd00:0::2") == "fd00::2"
    for bad in ("", "host-2", "10.0.0.2:4000"):
        with pytest.raises(DriverError) as refused:
            _listen_address(bad)
        assert not refused.value.retryable


def test_a_repeated_prepare_gets_the_same_endpoint_and_nothing_else_does(tmp_path: Path) -> None:
    assert _same_attempt(vm(tmp_path, incoming=TARGET), 3) is TARGET
    with pytest.raises(DriverError) as other:
        _same_attempt(vm(tmp_path, incoming=TARGET), 4)
    assert other.value.retryable, "the older attempt is destroyed first"
    with pytest.raises(DriverError) as preparing:
        _same_attempt(vm(tmp_path, incoming=IncomingEndpoint("10.0.0.2", 0, 0)), 3)
    assert preparing.value.retryable
    with pytest.raises(DriverError) as running:
        _same_attempt(vm(tmp_path), 3)
    assert not running.value.retryable


def test_only_a_booted_running_vm_is_sent(tmp_path: Path) -> None:
    refusals = {
        "incoming": (vm(tmp_path, incoming=TARGET), False),
        "failed": (vm(tmp_path, failure="boom"), False),
        "sending": (vm(tmp_path, outgoing=outgoing()), True),
        "no monitor": (vm(tmp_path), True),
    }
    for what, (held, retryable) in refusals.items():
        with pytest.raises(DriverError) as refused:
            _check_can_send(held)
        assert refused.value.retryable is retryable, what
    assert vm(tmp_path, incoming=TARGET).state is ObservedState.INCOMING
    assert vm(tmp_path, handed_over=True, paused=True).state is ObservedState.HANDED_OVER
