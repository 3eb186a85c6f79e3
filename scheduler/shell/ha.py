"""``stratus scheduler``: standby until it wins the leader lease, then a SchedulerApp per term.

A process:
1. locks its store (``<db>.lock``; a second process on the same store exits with an error) and
   reads its node id (``<db>.node``, made once: the lease names the node that holds it);
2. as a **standby**: applies the state log to its store and tries to win the lease every
   ``lease_s / 12`` (``Lease.try_every_s``); it serves no API and sends nothing to agents;
3. on winning: catches up with the log, snapshots it if the cluster has none yet, appends its
   fence record, and only then runs a ``SchedulerApp`` (scheduler/app.py) over its store, with a
   ``LeaderTerm`` (scheduler/term.py): every host gets a fresh window (``core.start``);
4. when the lease is lost (not renewed in time, or another leader), the term is revoked (nothing
   more is acted on), the app is stopped and the process is a standby again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from common.clock import Clock, SystemClock
from common.config import SchedulerConfig
from common.errors import StratusError
from common.natsauth import auth_options, nats_servers
from scheduler.core.contract import BuiltinImage
from scheduler.shell.app import SchedulerApp
from scheduler.shell.gallery import prepare_cluster
from scheduler.shell.leader import Lease, LeaseHolder, lease_bucket
from scheduler.shell.statelog import AppendUnknown, Fenced, StateLog, ensure_state_log
from scheduler.shell.stopping import cancel_until_done
from scheduler.shell.store import SqliteStore
from scheduler.shell.term import LeaderTerm, NotLeader

log = logging.getLogger(__name__)

RETRY_S = 0.5
STOP_TIMEOUT_S = 5.0


class StoreLocked(StratusError):
    """Another scheduler process runs on this store."""


@contextlib.contextmanager
def store_lock(db_path: str) -> Iterator[str]:
    """Hold ``<db>.lock`` for the process's life; yield the node id (``<db>.node``)."""
    lock_path = Path(f"{db_path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreLocked(
                f"another scheduler runs on the store {db_path}: give each scheduler its own "
                "--db (standbys replicate the leader's store through NATS)"
            ) from exc
        node_path = Path(f"{db_path}.node")
        if not node_path.exists():
            node_path.write_text(uuid.uuid4().hex[:12] + "\n")
        yield node_path.read_text().strip()
    finally:
        os.close(fd)


class HaScheduler:
    def __init__(self, config: SchedulerConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.app: SchedulerApp | None = None
        """The app of the current term (None while standby)."""
        self.terms = 0
        self.epoch = 0
        self.builtins: list[BuiltinImage] = []
        """The built-in images, stored while standby (``prepare_cluster``)."""
        self.leading = asyncio.Event()
        self.connected = asyncio.Event()
        """Set once NATS and JetStream answered: from then on a stop is orderly (drain, close);
        before it there is nothing to drain, and a signal cancels the start-up."""
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()
        if self.app is not None:
            self.app.stop()

    async def run(self) -> None:
        with store_lock(self.config.db_path) as node:
            store = await SqliteStore.open(self.config.db_path)
            seq = int(await store.meta("state_log_seq") or 0)
            log.info("store loaded db=%s node=%s state_log_seq=%d", self.config.db_path, node, seq)
            nc = await self._connect(node)
            js = nc.jetstream(timeout=2.0)
            statelog = StateLog(js, store, seq, replicas=self.config.replicas)
            try:
                kv = await self._prepare(js)
                if kv is None:
                    return
                self.connected.set()
                holder = LeaseHolder(node=node, scheduler_id=node)
                lease = Lease(kv, holder, self.config.lease_s, self.clock)
                log.info("scheduler standby node=%s state_seq=%d", node, seq)
                while await self._campaign(lease, statelog):
                    await self._lead(lease, statelog)
                    if self._stop.is_set():
                        await lease.release()
            finally:
                with contextlib.suppress(Exception):
                    await nc.drain()
                await statelog_store_close(statelog.store)

    async def _connect(self, node: str) -> Client:
        config = self.config
        return await nats.connect(
            nats_servers(config.nats_url),
            name=f"stratus-scheduler-lease-{node}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            **auth_options(config.nats_creds, config.nats_nkey_seed, config.nats_tls_ca),
        )

    async def _prepare(self, js: JetStreamContext) -> KeyValue | None:
        while not self._stop.is_set():
            try:
                await ensure_state_log(js, self.config.replicas)
                kv = await lease_bucket(js, self.config.lease_s, self.config.replicas)
                self.builtins = await prepare_cluster(js, self.config)
                return kv
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("jetstream not ready, retrying error=%r", exc)
            await self._pause(RETRY_S)
        return None

    def _in_time(self, seconds: float) -> Callable[[], bool]:
        """Whether a bounded step may go on: within ``seconds`` from now and not stopping."""
        deadline_s = self.clock.monotonic_s() + seconds
        return lambda: self.clock.monotonic_s() < deadline_s and not self._stop.is_set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _campaign(self, lease: Lease, statelog: StateLog) -> bool:
        """Follow the state log and try for the lease; True once won, False when stopping."""
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(self.config.lease_s):
                    await statelog.catch_up(self._in_time(self.config.lease_s))
                synced = True
            except (nats.errors.Error, TimeoutError, StratusError) as exc:
                log.debug("state log not caught up error=%r", exc)
                synced = False
            if synced and await lease.try_win():
                return True
            await self._pause(lease.try_every_s)
        return False

    async def _lead(self, lease: Lease, statelog: StateLog) -> None:
        epoch = lease.term.epoch
        try:
            in_time = self._in_time(self.config.lease_s)
            async with asyncio.timeout(self.config.lease_s):
                await statelog.catch_up(in_time)
                # A log with records has a snapshot (its first leader took one before its
                # fence): only the first leader of a cluster asks the snapshot bucket, whose
                # stream leader may be on a frozen NATS node.
                if statelog.seq == 0 and not await statelog.has_snapshot():
                    await statelog.take_snapshot(self.config.db_path)
                await statelog.fence(epoch, in_time)
        except (nats.errors.Error, TimeoutError, StratusError) as exc:
            log.warning("takeover failed, standby again epoch=%d error=%r", epoch, exc)
            lease.term.revoked = True
            return
        if not lease.term.may_act(self.clock.monotonic_s()):
            return
        await self._serve_term(lease, statelog)
        statelog.seq = int(await statelog.store.meta("state_log_seq") or 0)

    async def _serve_term(self, lease: Lease, statelog: StateLog) -> None:
        config = self.config
        term = LeaderTerm(
            lease,
            statelog,
            self.clock,
            tick_s=config.tick_s,
            heartbeat_interval_s=config.heartbeat_interval_s,
            db_path=config.db_path,
            snapshot_every=config.snapshot_every,
        )
        self.app = app = SchedulerApp(config, clock=self.clock, term=term, prepared=self.builtins)
        self.terms += 1
        self.epoch = term.epoch
        log.info("scheduler leading epoch=%d", term.epoch)
        keeping = asyncio.create_task(lease.keep(), name="lease")
        serving = asyncio.create_task(_run_app(app), name="app")
        stopping = asyncio.create_task(self._stop.wait(), name="stop")
        self.leading.set()
        try:
            await asyncio.wait([keeping, serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.leading.clear()
            if keeping.done() and not keeping.cancelled() and keeping.exception() is not None:
                log.warning("lease keeping failed error=%r", keeping.exception())
            if not stopping.done():
                lease.term.revoked = True  # lost: nothing more is acted on, from now
            app.stop()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await asyncio.wait([serving])
            await cancel_until_done([keeping, serving, stopping])  # again if one swallows it
            self.app = None
        if serving.done() and not serving.cancelled() and serving.exception() is not None:
            raise serving.exception()  # type: ignore[misc]
        log.info("scheduler term ended epoch=%d", term.epoch)


async def _run_app(app: SchedulerApp) -> None:
    """The app of one term; losing the lease or the state log's fence ends it quietly."""
    try:
        await app.run()
    except* (NotLeader, Fenced, AppendUnknown) as group:
        log.warning("scheduler deposed error=%s", group.exceptions[0])


async def statelog_store_close(store: SqliteStore) -> None:
    with contextlib.suppress(Exception):
        await store.close()
