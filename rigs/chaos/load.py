"""The load generator: concurrent creates (API request/reply and the jobs stream), half of them
with a NIC in a network, live migrations and deletes.

It records every ACKNOWLEDGED request: an API reply without error, or a jobs-stream PubAck (the
job is durable from then on). A request that times out during a fault is retried with the same
request id, as any publisher would; the scheduler answers a repeated id with its first result.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from nats.aio.client import Client
from nats.errors import Error as NatsError

from cli.client import StratusClient
from common import subjects
from common.errors import ApiError
from common.fields import ErrorCode
from common.messages import CreateVm
from common.network_messages import NicRequest

SIZES = {"ExtraSmall": (250, 768), "Small": (1000, 1792)}
"""Sizes the load uses (cpu millicores, memory MiB): small enough to fit a degraded cluster."""
RETRY_FOR_S = 90.0
"""A request is retried (same request id) for this long before the publisher gives up."""
REQUEST_TIMEOUT_S = 2.0


class Op(StrEnum):
    CREATE_API = "create_api"
    CREATE_JOB = "create_job"
    DELETE = "delete"
    MIGRATE = "migrate"


@dataclass(frozen=True)
class Acked:
    request_id: str
    vm: str
    op: Op
    acked_at: float
    """Wall-clock seconds."""
    attempts: int
    sent_at: float = 0.0
    """Wall-clock seconds of the first attempt (0: not recorded)."""


@dataclass
class Load:
    nc: Client
    rng: random.Random
    max_live: int = 16
    workers: int = 3
    pace_s: float = 0.15
    vnet: str | None = None
    """A network half the created VMs get a NIC in (None: no NICs)."""
    acked: list[Acked] = field(default_factory=list)
    sizes: dict[str, str] = field(default_factory=dict)
    """VM name -> size, for every create submitted (acked or not)."""
    outcomes: Counter[str] = field(default_factory=Counter)
    live: list[str] = field(default_factory=list)
    delete_sent: set[str] = field(default_factory=set)
    """Every VM a delete was sent for, acked or not: one whose ack was lost may be gone."""
    _counter: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.client = StratusClient(self.nc, timeout_s=REQUEST_TIMEOUT_S)

    def _next(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}{self._counter:05d}"

    async def run(self) -> None:
        """Submit until ``stop()``; in-flight retries finish before this returns."""
        async with asyncio.TaskGroup() as group:
            for _ in range(self.workers):
                group.create_task(self._worker())

    def stop(self) -> None:
        self._stop.set()

    async def _worker(self) -> None:
        while not self._stop.is_set():
            roll = self.rng.random()
            if self.live and (roll < 0.3 or len(self.live) >= self.max_live):
                await self._delete(self.live.pop(self.rng.randrange(len(self.live))))
            elif self.live and roll < 0.4:
                await self._migrate(self.rng.choice(self.live))
            elif roll < 0.7:
                await self._create(Op.CREATE_API)
            else:
                await self._create(Op.CREATE_JOB)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.pace_s)

    async def _create(self, op: Op) -> None:
        name, request_id = self._next("vm-"), self._next("rq-")
        size = self.rng.choice(sorted(SIZES))
        self.sizes[name] = size
        nics = [NicRequest(vnet=self.vnet)] if self.vnet and self.rng.random() < 0.5 else []
        body = CreateVm(name=name, size=size, request_id=request_id, nics=nics)
        if op is Op.CREATE_API:
            ok = await self._retry(op, name, request_id, lambda: self.client.create_vm(body))
        else:
            ok = await self._retry(
                op,
                name,
                request_id,
                lambda: self.client.submit_job(subjects.VM_CREATE, body, request_id),
            )
        if ok:
            self.live.append(name)

    async def _delete(self, name: str) -> None:
        request_id = self._next("rq-")
        self.delete_sent.add(name)
        if not await self._retry(
            Op.DELETE, name, request_id, lambda: self.client.delete_vm(name, request_id)
        ):
            self.live.append(name)  # not deleted (e.g. its job is not yet processed): later

    async def _migrate(self, name: str) -> None:
        """A live migration to wherever the scheduler chooses (refused while the VM is not
        running, or already moving: counted, not retried)."""
        request_id = self._next("rq-")
        await self._retry(
            Op.MIGRATE,
            name,
            request_id,
            lambda: self.client.migrate_vm(name, request_id=request_id),
        )

    async def _retry(
        self, op: Op, name: str, request_id: str, call: Callable[[], Awaitable[object]]
    ) -> bool:
        """Call until acknowledged, refused, or ``RETRY_FOR_S`` ran out; True when acked."""
        deadline = time.monotonic() + RETRY_FOR_S
        attempts, sent_at = 0, time.time()
        while True:
            attempts += 1
            try:
                await call()
            except ApiError as exc:
                if exc.code is not ErrorCode.UNAVAILABLE:
                    self.outcomes[f"{op}_refused_{exc.code}"] += 1
                    return False
            except (NatsError, TimeoutError, OSError):
                pass
            else:
                self.acked.append(Acked(request_id, name, op, time.time(), attempts, sent_at))
                self.outcomes[f"{op}_acked"] += 1
                if attempts > 1:
                    self.outcomes[f"{op}_acked_after_retry"] += 1
                return True
            if time.monotonic() > deadline:
                self.outcomes[f"{op}_gave_up"] += 1
                return False
            self.outcomes[f"{op}_retried"] += 1
            await asyncio.sleep(0.2)  # back off: the cluster is mid-fault
