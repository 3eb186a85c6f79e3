"""A leader that stalls past its lease: it steps down, its term's loops all end, it leads again,
and SIGTERM ends it in any phase.

Seen under load (``bench.e2e`` on a loaded machine): after a step-down the jobs loop, whose
cancellation nats-py's ``wait_for`` swallowed (Python 3.11), kept fetching; the term never
ended, so the lone scheduler never led again, ignored SIGTERM and queued every heartbeat and
job it still received (its RSS grew by megabytes a second).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from cli.client import StratusClient
from common import codec, subjects
from common.config import SchedulerConfig
from common.errors import ApiError
from common.messages import CreateVm
from common.natsserver import NatsServer
from scheduler.shell import app as app_module, jobs
from scheduler.shell.app import SchedulerApp
from scheduler.shell.ha import STOP_TIMEOUT_S
from scheduler.shell.store import Rows
from scheduler.shell.term import NotLeader, SoloTerm
from tests.integration.test_leader import LEASE_S, HaCluster, leader_name
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


class _DeposableTerm(SoloTerm):
    """A term that may act until ``depose``: then, as a lease not renewed in time, it may not."""

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config.tick_s, config.heartbeat_interval_s)
        self.deposed = False
        self.appending = asyncio.Event()
        """Cleared: appends wait (a state log that does not answer)."""
        self.appending.set()

    @property
    def api_queue(self) -> str:
        return ""

    def may_act(self) -> bool:
        return not self.deposed

    def check(self) -> None:
        if self.deposed:
            raise NotLeader("not the leader any more")

    async def append(self, rows: Rows) -> Rows:
        await self.appending.wait()
        self.check()
        return rows


def _jobs_loop_swallowing_one_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[asyncio.Event, asyncio.Event]:
    """The real jobs loop, which carries on fetching after its first cancellation, as it does
    when that cancellation lands inside nats-py's ``wait_for`` just as a message arrives
    (Python 3.11). Returns (swallowed, ended)."""
    real = jobs.run_jobs
    swallowed, ended = asyncio.Event(), asyncio.Event()

    async def run_jobs(
        js: JetStreamContext, on_job: Callable[[Msg], None], room: Callable[[], Awaitable[None]]
    ) -> None:
        try:
            try:
                await real(js, on_job, room)
            except asyncio.CancelledError:
                swallowed.set()
                await real(js, on_job, room)  # fetching on
        finally:
            ended.set()

    monkeypatch.setattr(app_module, "run_jobs", run_jobs)  # as the app calls it
    return swallowed, ended


async def test_a_deposed_term_ends_all_its_loops_even_one_that_swallows_a_cancellation(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SchedulerConfig(nats_url=nats_server.url, db_path=str(tmp_path / "s.db"))
    swallowed, jobs_ended = _jobs_loop_swallowing_one_cancellation(monkeypatch)
    term = _DeposableTerm(config)
    app = SchedulerApp(config, term=term)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        term.deposed = True  # the lease was not renewed in time: the next append fails
        done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S + 5)
        assert task in done, "the deposed term's app never ended"
        with pytest.raises(ExceptionGroup) as ended:
            task.result()
        assert ended.group_contains(NotLeader)
        assert swallowed.is_set() and jobs_ended.is_set()
        assert app._nc is not None and app._nc.is_closed  # nothing more is received and queued
    finally:
        app.stop()
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)


@pytest.fixture
def ha(nats_server: NatsServer, tmp_path: Path) -> Iterator[HaCluster]:
    cluster = HaCluster(nats_server.url, tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def api(nc: Client) -> StratusClient:
    return StratusClient(nc, timeout_s=2.0)


async def test_the_jobs_a_deposed_term_took_go_to_the_next_term_without_waiting_for_redelivery(
    nats_server: NatsServer, tmp_path: Path, nc: Client
) -> None:
    config = SchedulerConfig(nats_url=nats_server.url, db_path=str(tmp_path / "s.db"))
    term = _DeposableTerm(config)
    deposed = SchedulerApp(config, term=term)
    task = asyncio.create_task(deposed.run())
    names = [f"job-{i:02d}" for i in range(50)]
    try:
        async with asyncio.timeout(10):
            await deposed.ready.wait()
        term.appending.clear()  # the core loop waits on its state log ...
        await _publish_jobs(nc, names)
        await wait_until(
            lambda: sum(t.is_job for t in deposed._targets.values()) == len(names),
            message="the jobs taken by the term",
        )
        term.deposed = True  # ... and its lease is lost meanwhile
        term.appending.set()
        await asyncio.wait({task}, timeout=STOP_TIMEOUT_S + 5)
        assert task.done()
    finally:
        deposed.stop()
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
    successor = SchedulerApp(config)
    serving = asyncio.create_task(successor.run())
    try:
        await wait_until(  # well within the consumer's ack wait (30 s)
            lambda: _jobs_acked(nc, len(names)), timeout_s=10, message="every job done"
        )
    finally:
        successor.stop()
        await asyncio.wait_for(serving, timeout=STOP_TIMEOUT_S + 5)


SIM_HOSTS = 100
JOBS = 1000
STOP_MARGIN_S = 3.0
"""SIGTERM ends a scheduler within ``STOP_TIMEOUT_S`` plus this, in any phase."""


def _start_pool(ha: HaCluster) -> None:
    args = ["-m", "hostagent", "--nats", ha.url, "--simulate", str(SIM_HOSTS)]
    args += ["--simulate-prefix", "h", "--capacity", "64c/256g", "--heartbeat-interval", "0.3"]
    args += ["--data-dir", str(ha.workdir / "agents"), "--log-level", "WARNING"]
    ha.agents["pool"] = ha._spawn(args, "pool.log")


async def _publish_jobs(nc: Client, names: list[str]) -> None:
    js = nc.jetstream()
    subject = subjects.job_subject(subjects.VM_CREATE)

    async def publish(name: str) -> None:
        body = codec.encode(CreateVm(name=name, size="ExtraSmall"))
        await js.publish(subject, body, headers={"Nats-Msg-Id": name}, timeout=30)

    for start in range(0, len(names), 100):  # 100 in flight
        await asyncio.gather(*(publish(name) for name in names[start : start + 100]))


async def _loaded_lone_scheduler(
    ha: HaCluster, api: StratusClient, nc: Client
) -> tuple[list[str], asyncio.Task[None]]:
    """One scheduler, ``SIM_HOSTS`` simulated hosts, and ``JOBS`` creates being submitted
    through the jobs stream; returns once the scheduler is consuming them."""
    ha.start_scheduler("s1")
    await wait_until(lambda: "scheduler ready" in ha.log("s1"), timeout_s=20, message="s1")
    _start_pool(ha)
    await wait_until(
        lambda: _hosts(api, SIM_HOSTS), timeout_s=30, interval_s=0.2, message="hosts up"
    )
    names = [f"job-{i:05d}" for i in range(JOBS)]
    publishing = asyncio.create_task(_publish_jobs(nc, names))
    await wait_until(
        lambda: _jobs_acked(nc, 200), timeout_s=30, interval_s=0.2, message="jobs consumed"
    )
    return names, publishing


async def _hosts(api: StratusClient, count: int) -> bool:
    try:
        return len(await api.list_hosts()) >= count
    except (ApiError, nats.errors.Error, TimeoutError):
        return False


async def _jobs_acked(nc: Client, count: int) -> bool:
    """Whether at least ``count`` jobs were acked (each only after its create committed)."""
    try:
        info = await nc.jetstream().consumer_info(subjects.JOBS_STREAM, subjects.JOBS_CONSUMER)
    except (nats.errors.Error, TimeoutError):
        return False
    return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= count


async def _created(api: StratusClient, name: str) -> bool:
    """Whether a create is answered now (retried with its request id: applied once)."""
    try:
        vm = await api.create_vm(CreateVm(name=name, size="ExtraSmall", request_id=name))
    except (ApiError, nats.errors.Error, TimeoutError):
        return False
    return vm.name == name


async def _stall(ha: HaCluster) -> None:
    """Freeze the scheduler for longer than its lease (a stall under load)."""
    ha.signal_scheduler("s1", signal.SIGSTOP)
    try:
        deadline_s = time.monotonic() + 2 * LEASE_S
        await wait_until(lambda: time.monotonic() > deadline_s, message="the stall")
    finally:
        ha.signal_scheduler("s1", signal.SIGCONT)


async def _ends_on_sigterm(ha: HaCluster) -> None:
    proc = ha.schedulers["s1"]
    ha.signal_scheduler("s1", signal.SIGTERM)
    await wait_until(
        lambda: proc.poll() is not None,
        timeout_s=STOP_TIMEOUT_S + STOP_MARGIN_S,
        message="the scheduler ending on SIGTERM",
    )
    assert proc.returncode == 0


async def test_a_lone_leader_stalled_past_its_lease_under_load_leads_again_and_serves(
    ha: HaCluster, api: StratusClient, nc: Client
) -> None:
    names, publishing = await _loaded_lone_scheduler(ha, api, nc)
    terms = ha.log("s1").count("scheduler leading")
    await _stall(ha)
    await wait_until(
        lambda: ha.log("s1").count("scheduler leading") > terms,
        timeout_s=20,
        message="s1 leading again",
    )
    assert "scheduler term ended" in ha.log("s1")
    assert await leader_name(ha, nc) == "s1"
    await publishing
    await wait_until(lambda: _created(api, "after"), timeout_s=10, message="a create answered")
    # Every job is done in the end: those the stall's term held come back (released, or
    # redelivered after the consumer's ack wait of 30 s for a fetch cut short) and are done.
    await wait_until(
        lambda: _jobs_acked(nc, len(names)), timeout_s=40, interval_s=0.2, message="every job"
    )
    await _ends_on_sigterm(ha)


async def test_sigterm_during_a_stall_past_the_lease_ends_the_scheduler(
    ha: HaCluster, api: StratusClient, nc: Client
) -> None:
    _, publishing = await _loaded_lone_scheduler(ha, api, nc)
    ha.signal_scheduler("s1", signal.SIGSTOP)
    try:
        deadline_s = time.monotonic() + 2 * LEASE_S
        await wait_until(lambda: time.monotonic() > deadline_s, message="the stall")
        ha.signal_scheduler("s1", signal.SIGTERM)  # pending until it wakes, past its lease
    finally:
        ha.signal_scheduler("s1", signal.SIGCONT)
    proc = ha.schedulers["s1"]
    await wait_until(
        lambda: proc.poll() is not None,
        timeout_s=STOP_TIMEOUT_S + STOP_MARGIN_S,
        message="the scheduler ending on SIGTERM",
    )
    assert proc.returncode == 0
    publishing.cancel()
    await asyncio.gather(publishing, return_exceptions=True)
