"""The seeded fault-injection campaign of CI, judged by the observer: one fault of each kind, 17
on the fake-driver cluster under load and 6 on real QEMU guests judged from outside the system
(a plan's first faults try every kind once; the long mode repeats them).

Replay a seed with ``STRATUS_CHAOS_SEED=N .venv/bin/pytest tests/chaos -x`` (and
``STRATUS_CHAOS_FAULTS=N`` / ``STRATUS_CHAOS_QEMU_FAULTS=N`` for other counts); the long mode
is ``python -m bench chaos``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from rigs.chaos import netns
from rigs.chaos.campaign import Report, Settings, run_campaign
from rigs.chaos.faults import QEMU_WEIGHTS, WEIGHTS, Kind
from rigs.chaos.qemucampaign import run_qemu_campaign
from tests.qemukit import boot_kit

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.e2e]

DEFAULT_SEED = 6
DEFAULT_FAULTS = len(WEIGHTS)
DEFAULT_QEMU_FAULTS = len(QEMU_WEIGHTS)


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("netns_available")
async def test_seeded_campaign_loses_nothing_and_never_runs_two_copies(tmp_path: Path) -> None:
    seed = int(os.environ.get("STRATUS_CHAOS_SEED", DEFAULT_SEED))
    faults = int(os.environ.get("STRATUS_CHAOS_FAULTS", DEFAULT_FAULTS))
    report = await run_campaign(Settings(seed=seed, faults=faults, workdir=tmp_path))
    assert netns.ours() == [], "namespaces or links left behind"
    _verdict(report, f"STRATUS_CHAOS_SEED={seed} STRATUS_CHAOS_FAULTS={faults}", tmp_path)
    assert len(report.faults) == faults
    _every_kind(report, WEIGHTS)
    assert report.acked, "the load generator got nothing acknowledged"
    assert report.outcomes["disk_writes_acked"] > 0, "no guest wrote to a replicated disk"


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("netns_available")
async def test_real_guests_never_execute_twice_seen_from_their_consoles(tmp_path: Path) -> None:
    seed = int(os.environ.get("STRATUS_CHAOS_SEED", DEFAULT_SEED))
    faults = int(os.environ.get("STRATUS_CHAOS_QEMU_FAULTS", DEFAULT_QEMU_FAULTS))
    kit = await asyncio.to_thread(boot_kit)
    report = await run_qemu_campaign(Settings(seed=seed, faults=faults, workdir=tmp_path), kit)
    assert netns.ours() == [], "namespaces or links left behind"
    _verdict(report, f"STRATUS_CHAOS_SEED={seed} STRATUS_CHAOS_QEMU_FAULTS={faults}", tmp_path)
    assert len(report.faults) == faults
    _every_kind(report, QEMU_WEIGHTS)
    assert report.outcomes["ticks"] > 0, "the guests' consoles were never read"
    print(f"{report.outcomes}\n{report.timeline()}")


def _every_kind(report: Report, kinds: dict[Kind, int]) -> None:
    """With at least one fault per kind, every kind was injected."""
    if len(report.faults) >= len(kinds):
        assert set(report.faults_by_kind()) == set(map(str, kinds)), report.faults_by_kind()


def _verdict(report: Report, env: str, logs: Path) -> None:
    print(f"\n{report.summary()}")
    replay = f"{env} .venv/bin/pytest tests/chaos -x"
    assert not report.violations, (
        f"{report.summary()}\nfault timeline:\n{report.timeline()}\nreplay: {replay}\nlogs: {logs}"
    )
