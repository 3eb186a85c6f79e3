"""The agent's side of the fence guard (hostagent/fenceguard.py): publish the lease, keep the
host's guard running.

Only the qemu driver needs a guard: its VMs are processes that outlive the agent, while the fake
driver's VMs die with it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from pathlib import Path

from common.clock import Clock
from hostagent.agent import Agent
from hostagent.fenceguard import ensure_guard, guard_pid
from hostagent.guardvms import process_start
from hostagent.lease import Lease
from hostagent.leasefile import LeaseRecord, current_boot_id, lease_path, write_lease

log = logging.getLogger(__name__)

KEEPER_CHECK_S = 5.0
"""How often the agent checks that its guard still runs (and starts a new one if not)."""


class LeasePublisher:
    """Writes the agent's lease to ``<data_dir>/<host_id>/lease.json`` on every renewal."""

    def __init__(self, path: Path, clock: Clock, *, pid: int, pid_start: int, boot_id: str) -> None:
        self.path = path
        self._clock = clock
        self._pid = pid
        self._pid_start = pid_start
        self._boot_id = boot_id

    def publish(self, lease: Lease) -> None:
        expires_at_s = lease.expires_at_s if math.isfinite(lease.expires_at_s) else None
        record = LeaseRecord(
            expires_at_s, self._clock.monotonic_s(), self._pid, self._pid_start, self._boot_id
        )
        try:
            write_lease(self.path, record)
        except OSError as exc:  # the guard then fences at the last published expiry: safe
            log.error("lease not published path=%s error=%s", self.path, exc)


class FenceGuardKeeper:
    def __init__(self, agent: Agent, data_dir: str | Path, clock: Clock) -> None:
        self.host_id = agent.host_id
        self.data_dir = Path(data_dir).resolve()
        self.publisher = LeasePublisher(
            lease_path(self.data_dir, self.host_id),
            clock,
            pid=os.getpid(),
            pid_start=process_start(os.getpid()) or 0,
            boot_id=current_boot_id(),
        )
        self.publisher.publish(agent.lease)
        agent.on_lease = self.publisher.publish

    async def ensure(self) -> int:
        """Start the host's guard unless a live one exists; its pid. Raises OSError."""
        pid = await asyncio.to_thread(ensure_guard, self.data_dir, self.host_id)
        log.info("fence guard ready host_id=%s pid=%d", self.host_id, pid)
        return pid

    async def run(self) -> None:
        """Keep the guard running while the agent serves."""
        while True:
            await asyncio.sleep(KEEPER_CHECK_S)
            if guard_pid(self.data_dir, self.host_id) is not None:
                continue
            log.warning("fence guard gone, restarting host_id=%s", self.host_id)
            try:
                await self.ensure()
            except OSError as exc:
                log.error("fence guard not restarted host_id=%s error=%s", self.host_id, exc)
