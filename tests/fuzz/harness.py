"""The fuzzing target: a real nats-server, the scheduler in-process on its own event loop (in a
thread, so hypothesis can drive it from a plain test), and real agents as processes.

``send`` delivers a batch of cases concurrently and checks each request's reply; ``observe``
checks what the API and the agents' own heartbeats say about the cluster.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from common import codec, messages as m, subjects
from common.config import SchedulerConfig
from common.natsserver import NatsServer
from rigs.cluster import Cluster, Timings, overlapping_executions
from scheduler.shell.app import SchedulerApp
from tests.fuzz.cases import CAPTURE_REPORTS, VM_POOL, Case, Kind

T = TypeVar("T")

REQUEST_TIMEOUT_S: Final = 10.0
TIMINGS: Final = Timings(heartbeat_interval_s=0.2, fence_after_s=1.5, dead_after_s=3.0)
"""Fake hosts made up by fuzzed heartbeats go dead quickly; real agents have room under load."""

_VM_OPS = (subjects.VM_CREATE, subjects.VM_GET, subjects.VM_STOP, subjects.VM_START)
REPLY_DECODERS: Final[dict[str, Callable[[bytes], msgspec.Struct]]] = {
    **{s: codec.vm_reply.decode for s in _VM_OPS},
    subjects.VM_DELETE: codec.vm_reply.decode,
    subjects.VM_CAPTURE: codec.vm_reply.decode,
    subjects.DISK_ATTACH: codec.vm_reply.decode,
    subjects.DISK_DETACH: codec.vm_reply.decode,
    subjects.VM_LIST: codec.vm_list_reply.decode,
    subjects.HOST_LIST: codec.host_list_reply.decode,
    subjects.HOST_CORDON: codec.host_reply.decode,
    subjects.HOST_UNCORDON: codec.host_reply.decode,
    subjects.HOST_DRAIN: codec.host_reply.decode,
    subjects.SIZES_LIST: codec.size_list_reply.decode,
    subjects.IMAGE_LIST: codec.image_list_reply.decode,
    subjects.IMAGE_UPLOAD: codec.image_reply.decode,
    subjects.IMAGE_DELETE: codec.image_reply.decode,
    CAPTURE_REPORTS: codec.image_reply.decode,
    subjects.USAGE_GET: codec.usage_reply.decode,
    subjects.VNET_CREATE: codec.vnet_reply.decode,
    subjects.VNET_GET: codec.vnet_reply.decode,
    subjects.VNET_DELETE: codec.vnet_reply.decode,
    subjects.VNET_LIST: codec.vnet_list_reply.decode,
    subjects.ENDPOINT_ADD: codec.vm_reply.decode,
    subjects.ENDPOINT_REMOVE: codec.vm_reply.decode,
}
_error_reply: Final = msgspec.json.Decoder(m.ErrorReply)


def check_reply(subject: str, data: bytes) -> str:
    """The outcome of a reply (``ok`` or its error code); raise AssertionError if it is not
    the typed reply of that subject, or if it is an internal error."""
    decode = REPLY_DECODERS.get(subject, _error_reply.decode)
    try:
        reply = decode(data)
    except msgspec.DecodeError as exc:
        raise AssertionError(f"untyped reply on {subject}: {exc}: {data[:300]!r}") from exc
    error: m.ErrorBody | None = getattr(reply, "error", None)
    if error is None:
        return "ok"
    assert error.code is not m.ErrorCode.INTERNAL, f"internal error on {subject}: {error}"
    return str(error.code)


@dataclass
class Stats:
    cases: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def summary(self) -> str:
        def fmt(counter: Counter[str]) -> str:
            return " ".join(f"{k}={v}" for k, v in sorted(counter.items()))

        return (
            f"fuzz cases={self.total} by_kind[{fmt(self.cases)}] "
            f"request_outcomes[{fmt(self.outcomes)}] mutations[{fmt(self.mutations)}]"
        )


class LoopThread:
    """An asyncio event loop in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout_s)

    def close(self) -> None:
        async def cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class FuzzTarget:
    def __init__(self, nats_server: NatsServer, workdir: Path, hosts: tuple[str, ...]) -> None:
        self.hosts = hosts
        self.stats = Stats()
        self.cluster = Cluster(nats_server, workdir, timings=Timings(**TIMINGS))
        self.config = SchedulerConfig(
            nats_url=nats_server.url,
            db_path=str(workdir / "scheduler.db"),
            heartbeat_interval_s=TIMINGS["heartbeat_interval_s"],
            fence_after_s=TIMINGS["fence_after_s"],
            dead_after_s=TIMINGS["dead_after_s"],
        )
        self.app = SchedulerApp(self.config)
        self.thread = LoopThread()
        self.heartbeats: dict[str, m.Heartbeat] = {}
        self._nc: Client | None = None
        self._app_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.thread.run(self._start())
        for host in self.hosts:
            self.cluster.start_agent(host, capacity="8c/16g")

    async def _start(self) -> None:
        self._app_task = asyncio.create_task(self.app.run())
        async with asyncio.timeout(15):
            await self.app.ready.wait()
        self._nc = await nats.connect(self.config.nats_url, connect_timeout=2)
        await self._nc.subscribe(subjects.HEARTBEAT_WILDCARD, cb=self._on_heartbeat)

    async def _on_heartbeat(self, msg: Msg) -> None:
        """The real agents' own word on what they hold (fuzzed heartbeats filtered out)."""
        host = subjects.host_of_heartbeat(msg.subject)
        if host not in self.hosts:
            return
        try:
            hb = codec.heartbeat.decode(msg.data)
        except msgspec.DecodeError:
            return
        if hb.host_id == host and not hb.vms_omitted:  # left out: unchanged since the last
            self.heartbeats[host] = hb

    def stop(self) -> None:
        try:
            self.thread.run(self._stop())
        finally:
            self.cluster.stop()
            self.thread.close()

    async def _stop(self) -> None:
        if self._nc is not None:
            await self._nc.close()
        self.app.stop()
        if self._app_task is not None:
            await asyncio.wait_for(self._app_task, timeout=15)

    @property
    def nc(self) -> Client:
        assert self._nc is not None
        return self._nc

    def alive(self) -> list[str]:
        """What died: the scheduler's task or an agent process (empty when all live)."""
        agents = self.cluster.agents.items()
        dead = [f"agent {h} exit={p.poll()}" for h, p in agents if p.poll() is not None]
        task = self._app_task
        if task is not None and task.done():
            dead.append(f"scheduler: {task.exception() if not task.cancelled() else 'cancelled'}")
        return dead

    # ------------------------------------------------------------------ sending

    def send(self, batch: list[Case]) -> None:
        self.thread.run(self._send(batch))

    async def _send(self, batch: list[Case]) -> None:
        js = self.nc.jetstream()
        results = await asyncio.gather(*(self._one(js, case) for case in batch))
        for case, outcome in zip(batch, results, strict=True):
            self.stats.cases[case.kind] += 1
            self.stats.mutations[case.mutation] += 1
            if outcome is not None:
                self.stats.outcomes[outcome] += 1

    async def _one(self, js: Any, case: Case) -> str | None:
        if case.kind is Kind.REQUEST:
            try:
                reply = await self.nc.request(case.subject, case.body, timeout=REQUEST_TIMEOUT_S)
            except nats.errors.TimeoutError as exc:
                raise AssertionError(f"no reply on {case.subject} to {case.body[:300]!r}") from exc
            return check_reply(case.subject, reply.data)
        if case.kind is Kind.JOB:
            try:
                await js.publish(case.subject, case.body, headers=case.headers or None, timeout=10)
            except nats.js.errors.BadRequestError:
                return None  # refused by JetStream itself (too large for the stream)
            return None
        await self.nc.publish(case.subject, case.body)
        return None

    # ------------------------------------------------------------------ observing

    async def ask(self, subject: str, body: bytes = b"{}") -> bytes:
        return (await self.nc.request(subject, body, timeout=REQUEST_TIMEOUT_S)).data

    def request(self, subject: str, body: bytes = b"{}") -> bytes:
        return self.thread.run(self.ask(subject, body))

    def wait(self, predicate: Callable[[], Awaitable[bool] | bool], timeout_s: float) -> None:
        from tests.waiting import wait_until

        self.thread.run(wait_until(predicate, timeout_s=timeout_s, interval_s=0.1), timeout_s + 5)

    def overlaps(self) -> list[str]:
        """VMs of the scheduler's that executed on two hosts at once (the orphans the fuzzer
        itself forged onto both agents are left out: only access control stops those)."""
        rows = [r for r in self.cluster.execution_log() if r["vm"] in VM_POOL]
        return overlapping_executions(rows, {})
