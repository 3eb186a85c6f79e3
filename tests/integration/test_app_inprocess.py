"""The scheduler app run inside the test's event loop: the entry points an in-process front end
(such as an HTTP API) uses, answered only after commit, as over NATS."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import nats.errors
import pytest

from cli.client import connect
from common import subjects
from common.config import SchedulerConfig
from common.fields import ErrorCode
from common.messages import CreateVm, VmRef, VmReply, VmState
from common.natsserver import NatsServer, start_nats_server
from scheduler.core.contract import Op
from scheduler.shell import readview
from scheduler.shell.app import SchedulerApp
from scheduler.shell.readview import ReadView
from scheduler.shell.statelog import Fenced
from scheduler.shell.store import Loaded, Rows, SqliteStore
from scheduler.shell.term import SoloTerm
from scheduler.state.cluster import ClusterState
from tests.conftest import _require_nats
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


async def test_submit_answers_after_commit_and_read_sees_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    config = SchedulerConfig(nats_url=nats_server.url, db_path=str(tmp_path / "s.db"))
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        reply = await app.submit(Op.CREATE, CreateVm(name="inproc", size="Small"))
        assert reply.vm is not None and reply.vm.state is VmState.PENDING
        bad = await app.submit(Op.STOP, VmRef(name="nope"))
        assert bad.error is not None and bad.error.code is ErrorCode.NOT_FOUND
        listed = app.read("stratus.api.vm.get", b'{"name": "inproc"}')
        assert b'"state":"pending"' in listed
        # Committed before the reply: a second connection to the store sees the record.
        store = await SqliteStore.open(config.db_path)
        try:
            loaded = await store.load()
        finally:
            await store.close()
        assert [vm.name for vm in loaded.vms] == ["inproc"]
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=10)


async def test_a_scheduler_stopped_while_nats_is_away_answers_nothing_once_it_is_back(
    tmp_path: Path,
) -> None:
    """Its connection is closed, not left reconnecting: nats-py's drain raises at once while the
    client reconnects, and a deposed leader's subscriptions then answered reads from a stale
    view once NATS was back (the chaos campaign saw acknowledged VMs vanish from listings)."""
    _require_nats()
    server = start_nats_server(tmp_path / "nats")
    port = server.port
    config = SchedulerConfig(nats_url=server.url, db_path=str(tmp_path / "s.db"))
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        server.process.kill()
        server.process.wait(timeout=10)
        app.stop()
        await asyncio.wait_for(task, timeout=10)
        server = start_nats_server(tmp_path / "nats", port=port)
        client = await connect(server.url)
        try:  # a connection left reconnecting is back within a second or so: ask for 3 s
            deadline = asyncio.get_running_loop().time() + 3.0
            while asyncio.get_running_loop().time() < deadline:
                with pytest.raises(nats.errors.NoRespondersError):
                    await client.request(subjects.VM_LIST, b"{}", timeout=2)
                await asyncio.sleep(0.1)  # pacing of the questions, not a synchronisation
        finally:
            await client.close()
    finally:
        app.stop()
        await asyncio.gather(task, return_exceptions=True)
        server.stop()


async def test_the_loop_stays_free_while_a_restart_indexes_the_store(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Indexing 100,000 VMs takes seconds, longer than the leader lease: it runs off the event
    loop, which renews the lease meanwhile (in the loop, a scheduler once lost its lease while
    loading, was deposed and loaded everything again). The garbage collector, off while the
    records are decoded and indexed (its runs walked them all again and again), is on again
    once they are; they are frozen (never walked by a collection) until the app stops."""
    config = SchedulerConfig(nats_url=nats_server.url, db_path=str(tmp_path / "s.db"))
    real = readview.indexed

    collecting: list[bool] = []

    def slow(loaded: Loaded) -> tuple[ClusterState, ReadView]:
        collecting.append(gc.isenabled())
        time.sleep(1.0)  # a big store's indexing, as CPU would hold the thread
        return real(loaded)

    monkeypatch.setattr(readview, "indexed", slow)
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    loop = asyncio.get_running_loop()
    longest_s, last = 0.0, loop.time()
    try:
        async with asyncio.timeout(10):
            while not app.ready.is_set():
                await asyncio.sleep(0.02)  # the ticks whose gaps are measured
                now = loop.time()
                longest_s, last = max(longest_s, now - last), now
        assert longest_s < 0.5, f"the loop was held {longest_s:.2f} s"
        assert collecting == [False]
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0, "the loaded records are not walked by collections"
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=10)
    assert gc.get_freeze_count() == 0, "once stopped, what it loaded may be collected"


class _LoggedTerm(SoloTerm):
    """A term whose state log records which VMs each append carried, and refuses (as a
    fenced leader's log does) the batches of the VMs named in ``refused``."""

    def __init__(self, config: SchedulerConfig, refused: set[str] | None = None) -> None:
        super().__init__(config.tick_s, config.heartbeat_interval_s)
        self.appended: list[str] = []
        self.refused = refused or set()

    async def append(self, rows: Rows) -> Rows:
        names = [name for name, _, _ in rows.vms]
        if self.refused & set(names):
            raise Fenced("state log moved on: another leader")
        self.appended.extend(names)
        return rows


def _slow_write_of(vm: str, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Hold the SQLite write of the first batch that carries ``vm`` until the event is set."""
    gate = asyncio.Event()
    real = SqliteStore.write

    async def write(self: SqliteStore, rows: Rows) -> None:
        if not gate.is_set() and any(name == vm for name, _, _ in rows.vms):
            await gate.wait()
        await real(self, rows)

    monkeypatch.setattr(SqliteStore, "write", write)
    return gate


async def test_a_step_is_logged_while_the_one_before_is_written_and_answers_come_in_order(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SchedulerConfig(nats_url=nats_server.url, db_path=str(tmp_path / "s.db"))
    term = _LoggedTerm(config)
    gate = _slow_write_of("a", monkeypatch)
    app = SchedulerApp(config, term=term)
    task = asyncio.create_task(app.run())
    answered: list[str] = []
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        first = asyncio.create_task(app.submit(Op.CREATE, CreateVm(name="a", size="Small")))
        first.add_done_callback(lambda _: answered.append("a"))
        await wait_until(lambda: "a" in term.appended)
        second = asyncio.create_task(app.submit(Op.CREATE, CreateVm(name="b", size="Small")))
        second.add_done_callback(lambda _: answered.append("b"))
        await wait_until(lambda: "b" in term.appended, message="b logged while a is written")
        assert answered == [], "a step answered before its write"
        assert b'"pending"' not in app.read("stratus.api.vm.get", b'{"name": "a"}')
        gate.set()
        replies = await asyncio.gather(first, second)
        assert [r.vm.name for r in replies if r.vm is not None] == ["a", "b"]
        assert answered == ["a", "b"]
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=10)


async def test_a_refused_append_answers_nothing_of_its_step_or_later_ones(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SchedulerConfig(nats_url=nats_server.url, db_path=str(tmp_path / "s.db"))
    term = _LoggedTerm(config, refused={"b"})
    gate = _slow_write_of("a", monkeypatch)
    app = SchedulerApp(config, term=term)
    task = asyncio.create_task(app.run())
    submitted: list[asyncio.Task[VmReply]] = []
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        for name in ("a", "b", "c"):
            submitted.append(
                asyncio.create_task(app.submit(Op.CREATE, CreateVm(name=name, size="Small")))
            )
            if name == "a":
                await wait_until(lambda: "a" in term.appended)
        await wait_until(lambda: app.queue.empty(), message="b and c taken by the core loop")
        gate.set()
        with pytest.raises(ExceptionGroup) as ended:
            await asyncio.wait_for(task, timeout=10)
        assert ended.group_contains(Fenced)
        assert submitted[0].done() and submitted[0].result().vm is not None
        assert not submitted[1].done() and not submitted[2].done()
        assert term.appended == ["a"]
    finally:
        for waiting_reply in submitted:
            waiting_reply.cancel()
        app.stop()
        await asyncio.gather(task, return_exceptions=True)
    store = await SqliteStore.open(config.db_path)
    try:
        loaded = await store.load()
    finally:
        await store.close()
    assert [vm.name for vm in loaded.vms] == ["a"]
