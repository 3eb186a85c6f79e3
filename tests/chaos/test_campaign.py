"""The seeded fault-injection campaign of CI: >= 50 faults under load, judged by the observer.

Replay a seed with ``STRATUS_CHAOS_SEED=N .venv/bin/pytest tests/chaos -x`` (and
``STRATUS_CHAOS_FAULTS=N`` for another count); the long mode is ``python -m bench chaos``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rigs.chaos import netns
from rigs.chaos.campaign import Settings, run_campaign

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.e2e]

DEFAULT_SEED = 6
DEFAULT_FAULTS = 50


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("netns_available")
async def test_seeded_campaign_loses_nothing_and_never_runs_two_copies(tmp_path: Path) -> None:
    seed = int(os.environ.get("STRATUS_CHAOS_SEED", DEFAULT_SEED))
    faults = int(os.environ.get("STRATUS_CHAOS_FAULTS", DEFAULT_FAULTS))
    report = await run_campaign(Settings(seed=seed, faults=faults, workdir=tmp_path))
    assert netns.ours() == [], "namespaces or links left behind"
    print(f"\n{report.summary()}")
    replay = (
        f"STRATUS_CHAOS_SEED={seed} STRATUS_CHAOS_FAULTS={faults} .venv/bin/pytest tests/chaos -x"
    )
    assert not report.violations, (
        f"{report.summary()}\nfault timeline:\n{report.timeline()}\n"
        f"replay: {replay}\nlogs: {tmp_path}"
    )
    assert len(report.faults) == faults
    assert report.acked, "the load generator got nothing acknowledged"
