"""SchedulerApp: the thin shell around the core. NATS in, the core loop, commit, then actions out.

Loops (one TaskGroup): the core loop (the single writer), the tick, the jobs consumer and the
event publisher. Callbacks only decode and enqueue; nothing but the core loop mutates state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from common import codec, subjects
from common.clock import Clock, SystemClock
from common.config import SchedulerConfig
from common.messages import CreateVm, HostCommands, HostRef, HostReply, VmRef, VmReply
from common.natsauth import redact_url
from common.paging import DEFAULT_MAX_PAYLOAD
from common.usage_messages import UsageQuery, UsageReply
from scheduler.core.contract import (
    Ack,
    Action,
    BuiltinImage,
    DropImageObject,
    Emit,
    HeartbeatReceived,
    Input,
    InvalidJob,
    Mutation,
    Now,
    Op,
    Reconnected,
    Reply,
    SendCommands,
    StepResult,
    Tick,
)
from scheduler.core.step import SchedulerCore
from scheduler.shell import collector, gallery, metering, readview
from scheduler.shell.api import (
    ReadApi,
    decode_capture_report,
    decode_heartbeat,
    decode_mutation,
    error_reply,
    is_read,
)
from scheduler.shell.connection import connect
from scheduler.shell.eventpub import EventPublisher, log_event
from scheduler.shell.jobs import run_jobs
from scheduler.shell.lanes import Lanes
from scheduler.shell.metrics import Observer, SchedulerMetrics
from scheduler.shell.pipeline import CommitPipeline, Stage
from scheduler.shell.readview import ReadView, Snapshot, snapshot
from scheduler.shell.retry import retry_while_nats_down
from scheduler.shell.stopping import close_connection, release_jobs, run_loops
from scheduler.shell.store import Batch, Rows, SqliteStore, encode_batch
from scheduler.shell.term import SoloTerm, Term
from scheduler.state.cluster import ClusterState
from scheduler.state.storage import ImageRecord

if TYPE_CHECKING:  # imported when serving HTTP only: it is most of aiohttp
    from scheduler.shell.http.server import HttpServer

log = logging.getLogger(__name__)

MAX_BATCH = 2048
"""Most inputs handled by one core step (and so one commit)."""


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the answer to a token goes: a request's reply inbox, a job to ack, or a future
    (for callers inside this process, such as an HTTP front end)."""

    msg: Msg | None = None
    is_job: bool = False
    future: asyncio.Future[msgspec.Struct | None] | None = None


class SchedulerApp:
    def __init__(
        self,
        config: SchedulerConfig,
        *,
        clock: Clock | None = None,
        term: Term | None = None,
        prepared: list[BuiltinImage] | None = None,
    ) -> None:
        self.config = config
        self.prepared = prepared
        """The built-in images, when the streams and the gallery were prepared already (by a
        standby, before it took over): a term then starts without any JetStream call but its
        state log appends (see ``prepare_cluster``)."""
        self.clock = clock or SystemClock()
        # HA hook: the term of office (scheduler/term.py): may act? epoch? state log.
        self.term = term or SoloTerm(config.tick_s, config.heartbeat_interval_s)
        self.scheduler_id = uuid.uuid4().hex[:12]
        self.queue = Lanes()  # what hosts and the clock say first, then requests
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._tokens = itertools.count(1)
        self._targets: dict[int, _Target] = {}
        self._outbox: asyncio.Queue[tuple[int, str, bytes]] = asyncio.Queue()
        self._published: list[int] = []
        self._queued_heartbeats: dict[str, int] = {}
        """Each host's newest queued heartbeat (its token)."""
        self._tick_queued = False
        self.core: SchedulerCore | None = None
        self.view: ReadView | None = None
        """The cluster as last committed: what reads see (scheduler/shell/readview.py)."""
        self._nc: Client | None = None
        self._reads: ReadApi | None = None
        self.http: HttpServer | None = None
        self.observers: list[Observer] = []
        """Called with each committed step's actions before they are carried out, and a way to
        tell where a token's request came from (``nats``, ``job``, ``http``): metrics."""
        self.metrics = SchedulerMetrics(self).attach()

    def committed(self) -> ClusterState | None:
        """The cluster as last committed: what reads see."""
        return self.view.state if self.view is not None else None

    def now(self) -> Now:
        return Now(self.clock.monotonic_s(), self.clock.utcnow())

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        store = await SqliteStore.open(self.config.db_path)
        survivors = collector.started()  # what lives on is frozen, as what was loaded is
        try:
            loaded, state, view = await readview.load(store)  # off the event loop
            self.core = SchedulerCore(
                self.config,
                state,
                scheduler_id=self.scheduler_id,
                event_seq=loaded.event_seq,
                epoch=self.term.epoch,  # HA hook: the acks carry it (a term is one epoch)
            )
            self.view = view
            self._reads = ReadApi(
                lambda: view.state,
                list(self.core.sizes.values()),
                max_reply_bytes=lambda: self._nc.max_payload if self._nc else DEFAULT_MAX_PAYLOAD,
            )
            for row in loaded.outbox:
                self._outbox.put_nowait(row)
            log.info(
                "store loaded vms=%d hosts=%d unpublished_events=%d",
                len(loaded.vms),
                len(loaded.hosts),
                len(loaded.outbox),
            )
            nc = await self._connect()
            try:
                await self._serve(nc, store)
            finally:  # jobs taken but not acked go back to the stream for the next term
                await release_jobs([t.msg for t in self._targets.values() if t.is_job and t.msg])
                await close_connection(nc)
        finally:
            survivors.stop()
            readview.thaw()
            await store.close()

    async def _connect(self) -> Client:
        def reconnected() -> None:
            self.queue.put_nowait(Reconnected())

        self._nc = await connect(self.config, self.scheduler_id, reconnected)
        return self._nc

    async def _serve(self, nc: Client, store: SqliteStore) -> None:
        assert self.core is not None
        js = nc.jetstream()
        builtins = self.prepared if self.prepared is not None else await self._prepare(js)
        # Start judging hosts only now that heartbeats can arrive: a fresh window for all.
        started = self.core.start(self.now(), builtins)
        await self._commit(store, started)
        await nc.subscribe(subjects.HEARTBEAT_WILDCARD, cb=self._on_heartbeat)
        queue = self.term.api_queue  # HA hook: a leader takes the API alone, no queue group
        await nc.subscribe(subjects.API_WILDCARD, queue=queue, cb=self._on_api)
        await nc.subscribe(subjects.CAPTURED_WILDCARD, queue=queue, cb=self._on_capture_report)
        await nc.flush()
        http = await self._start_http(nc)
        url = redact_url(self.config.nats_url)
        log.info("scheduler ready scheduler_id=%s nats=%s", self.scheduler_id, url)
        self.ready.set()
        publisher = EventPublisher(nc, self._outbox, self._published_one)
        loops = [
            self._run_ticks(),
            run_jobs(js, self._on_job, self._room_for_jobs),
            publisher.run(),
        ]
        if http is not None:
            loops.append(self._run_http(http))
        try:  # until stopped or a loop ends (a lost term); the core loop is cancelled once
            await run_loops(self._stop, self._run_core(nc, store), loops)
        finally:
            log.info("scheduler stopping")

    async def _prepare(self, js: JetStreamContext) -> list[BuiltinImage]:
        """The streams and the image gallery, retried while JetStream does not answer: a NATS
        restart while the scheduler starts must not end it (both steps are idempotent)."""

        @retry_while_nats_down("jetstream not ready")
        async def prepare() -> list[BuiltinImage]:
            return await gallery.prepare_cluster(js, self.config)

        return await prepare()

    async def _start_http(self, nc: Client) -> HttpServer | None:
        """The HTTP API and portal, when ``http_listen`` is set (its port: ``http_port``)."""
        if not self.config.http_listen:
            return None
        from scheduler.shell.http.server import HttpServer  # here: a restart need not import it

        self.http = HttpServer(self.config, self, nc)
        await self.http.start()
        return self.http

    async def _run_http(self, server: HttpServer) -> None:
        try:
            await asyncio.Event().wait()  # aiohttp serves on its own; stop it with the others
        finally:
            await server.stop()

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    # ------------------------------------------------------------------ inbound (decode only)

    def _token(self, msg: Msg, *, is_job: bool) -> int:
        token = next(self._tokens)
        self._targets[token] = _Target(msg, is_job)
        return token

    async def submit(self, op: Op, body: CreateVm | VmRef, *, timeout_s: float = 10.0) -> VmReply:
        """Hand a mutation to the core loop and wait for its reply (sent after commit)."""
        reply = await self._submit(op, body, timeout_s)
        assert isinstance(reply, VmReply)
        return reply

    async def submit_host(self, op: Op, body: HostRef, *, timeout_s: float = 10.0) -> HostReply:
        """Cordon, uncordon or drain a host; answered after commit, like ``submit``."""
        reply = await self._submit(op, body, timeout_s)
        assert isinstance(reply, HostReply)
        return reply

    async def _submit(
        self, op: Op, body: CreateVm | VmRef | HostRef, timeout_s: float
    ) -> msgspec.Struct | None:
        future: asyncio.Future[msgspec.Struct | None] = asyncio.get_running_loop().create_future()
        token = next(self._tokens)
        self._targets[token] = _Target(future=future)
        self.queue.put_nowait(Mutation(op, body, token))
        async with asyncio.timeout(timeout_s):
            return await future

    async def usage(self, query: UsageQuery) -> UsageReply:
        """Usage metering over the VM history in the store (scheduler/core/usage.py)."""
        state = self.view.state if self.view is not None else None
        return await metering.usage(self.config, state, query, self.clock.utcnow())

    def read(self, subject: str, body: bytes) -> bytes:
        """Answer a read-only API request (same subjects and bodies as over NATS)."""
        assert self._reads is not None
        return self._reads.answer(subject, body, self.now())

    async def _on_heartbeat(self, msg: Msg) -> None:
        hb = decode_heartbeat(msg)
        if hb is not None:
            token = self._token(msg, is_job=False)
            self._queued_heartbeats[hb.host_id] = token
            self.queue.put_nowait(HeartbeatReceived(hb, token))

    def _latest_heartbeats(self, items: list[Input]) -> list[Input]:
        """Drop, unanswered, each heartbeat overtaken by a newer one of its host still queued:
        the newer report says all it said (level-triggered) and its agent no longer waits for
        it. An overloaded scheduler thus never holds more than one heartbeat per host."""
        kept: list[Input] = []
        for item in items:
            if isinstance(item, HeartbeatReceived):
                host = item.heartbeat.host_id
                if self._queued_heartbeats.get(host) != item.token:
                    del self._targets[item.token]
                    continue
                del self._queued_heartbeats[host]
            kept.append(item)
        return kept

    async def _on_api(self, msg: Msg) -> None:
        if not msg.reply:
            log.warning("api request without reply inbox dropped subject=%s", msg.subject)
            return
        if not self.term.may_act():
            return  # a deposed or frozen-then-thawed leader stays silent: its view is stale
        if is_read(msg.subject):
            await msg.respond(self.read(msg.subject, msg.data))
            return
        if msg.subject == subjects.USAGE_GET:
            state = self.view.state if self.view is not None else None
            metering.answer_in_background(msg, self.config, state, self.clock.utcnow())
            return
        item = decode_mutation(msg.subject, msg.data, token=0)
        if isinstance(item, InvalidJob):
            log.warning("bad api request subject=%s code=%s", msg.subject, item.code)
            await msg.respond(error_reply(item.code, item.detail))
            return
        if item.op is Op.IMAGE_UPLOAD:  # its bytes are checked first, off this callback

            def enqueue(checked: Mutation) -> None:
                self.queue.put_nowait(replace(checked, token=self._token(msg, is_job=False)))

            gallery.check_upload_in_background(self._images_nc(), msg, item, self._images, enqueue)
            return
        self.queue.put_nowait(replace(item, token=self._token(msg, is_job=False)))

    async def _on_capture_report(self, msg: Msg) -> None:
        item = decode_capture_report(msg.subject, msg.data, token=0)
        if isinstance(item, InvalidJob):
            log.warning("bad capture report subject=%s code=%s", msg.subject, item.code)
            if msg.reply:
                await msg.respond(error_reply(item.code, item.detail))
            return

        def enqueue(checked: Mutation) -> None:
            self.queue.put_nowait(replace(checked, token=self._token(msg, is_job=False)))

        gallery.commit_capture_in_background(self._images_nc(), item, enqueue)

    def _images_nc(self) -> Client:
        assert self._nc is not None
        return self._nc

    def _images(self) -> dict[str, ImageRecord]:
        return self.view.state.images if self.view is not None else {}

    def _on_job(self, msg: Msg) -> None:
        msg_id = (msg.headers or {}).get("Nats-Msg-Id")
        token = self._token(msg, is_job=True)
        self.queue.put_nowait(
            decode_mutation(msg.subject, msg.data, token, via_job=True, msg_id=msg_id)
        )

    async def _room_for_jobs(self) -> None:
        await self.queue.room_for_requests(MAX_BATCH)

    async def _run_ticks(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            if self.term.fresh_windows_due(self.clock.monotonic_s()):  # HA hook: a healthy judge
                self.queue.put_nowait(Reconnected())
            # No ticks while NATS is away: no heartbeat can arrive, so silence proves nothing.
            if not self._tick_queued and (self._nc is None or self._nc.is_connected):
                self._tick_queued = True
                self.queue.put_nowait(Tick())

    # ------------------------------------------------------------------ the core loop

    async def _run_core(self, nc: Client, store: SqliteStore) -> None:
        """Step, commit, act, as a pipeline (pipeline.py): step N is appended to the state log
        while N-1 is written and acted on; stages in step order, none after a failure.

        With a backlog (more than ``MAX_BATCH`` inputs queued, as when every host's heartbeat
        arrives at once after a restart) the loop lets the event loop turn between steps: a step
        of acks alone awaits nothing that suspends, so without it the acks of the first steps
        went out only after the last one, and the lease renewal and the reads waited as long."""
        assert self.core is not None
        pipeline = CommitPipeline(self.term.append)  # HA hook: logged before stored or acted on
        try:
            while True:
                items = await self.queue.take(MAX_BATCH)
                if any(isinstance(item, Tick) for item in items):
                    self._tick_queued = False
                items = self._latest_heartbeats(items)
                if not items:
                    continue
                result = self.core.step(items, self.now())
                acks_only = await self._ack_heartbeats(result.actions)
                if acks_only and not self._published and readview.unchanged(result):
                    self.term.check()  # HA hook: a deposed term ends here as at an append
                    pipeline.check()  # and so does a failed commit of an earlier step
                else:
                    rows, copies = self._encode(result)  # a snapshot of this step
                    await pipeline.enter(
                        rows, self._storing(store, copies), self._acting(nc, result.actions)
                    )
                if not self.queue.empty():
                    await asyncio.sleep(0)  # a backlog: what waits on the loop runs first
        finally:
            await pipeline.finish()  # the steps being committed still act

    async def _commit(self, store: SqliteStore, result: StepResult) -> None:
        """Store a result outside the core loop (at start-up)."""
        rows, copies = self._encode(result)
        rows = await self.term.append(rows)  # HA hook: a standby sees the start-up records too
        await store.write(rows)
        assert self.view is not None
        self.view.apply(copies)

    def _storing(self, store: SqliteStore, copies: Snapshot) -> Stage:
        async def write(rows: Rows) -> None:
            await store.write(rows)
            assert self.view is not None
            self.view.apply(copies)

        return write

    def _acting(self, nc: Client, actions: list[Action]) -> Stage:
        async def act(rows: Rows) -> None:
            await self._carry_out(nc, actions)
            for event in rows.events:  # encoded once, for the store and for the stream
                self._outbox.put_nowait(event)

        return act

    async def _ack_heartbeats(self, actions: list[Action]) -> bool:
        """Heartbeat acks go before the commit: a lease promises nothing that is stored (the
        scheduler's liveness knowledge is volatile), and waiting for a big step's fsync made
        acks late enough under load for healthy hosts to fence. True if they were all the
        actions (a step that also stores nothing then needs no commit: most steps, at 10,000
        hosts, and its commit cost more than the step)."""
        for action in actions:
            if isinstance(action, Ack):
                self.term.check()  # HA hook: only a leader in its acting window acks
                await self._answer(self._targets.pop(action.token), action.ack)
        return all(isinstance(action, Ack) for action in actions)

    def _encode(self, result: StepResult) -> tuple[Rows, Snapshot]:
        """The rows to store and the copies for the read view, before the core's next step."""
        batch = Batch(
            vms=result.vms,
            hosts=result.hosts,
            replies=result.replies,
            events=[
                (a.event.seq, subjects.of_event(a.event), codec.encode(a.event))
                for a in result.actions
                if isinstance(a, Emit)
            ],
            published=self._published,
            images=result.images,
            vnets=result.vnets,
            counters=result.counters,
        )
        self._published = []
        return encode_batch(batch), snapshot(result)

    async def _carry_out(self, nc: Client, actions: list[Action]) -> None:
        """Executed only after the commit: replies and commands (heartbeat acks went before it;
        events go to the publisher after this)."""
        self.term.check()  # HA hook: only a leader in its acting window replies or commands
        for observe in self.observers:
            observe(actions, self._source)
        for action in actions:
            match action:
                case Reply(token=token, body=body):
                    await self._answer(self._targets.pop(token), body)
                case SendCommands(host_id=host, commands=commands):
                    message = HostCommands(  # HA hook: the epoch
                        host_id=host, commands=list(commands), epoch=self.term.epoch
                    )
                    await nc.publish(subjects.host_commands(host), codec.encode(message))
                case DropImageObject(sha256=sha256):
                    gallery.drop_object_in_background(nc, sha256)
                case Emit(event=event):
                    log_event(event)

    def _source(self, token: int) -> str:
        target = self._targets.get(token)
        if target is None or target.future is not None:
            return "http"  # in-process callers: the HTTP front end
        return "job" if target.is_job else "nats"

    async def _answer(self, target: _Target, body: msgspec.Struct | None) -> None:
        if target.future is not None:
            if not target.future.done():
                target.future.set_result(body)
        elif target.msg is not None and target.is_job:
            await target.msg.ack()
        elif target.msg is not None and body is not None and target.msg.reply:
            # A heartbeat published without a reply inbox gets no ack (responding would raise)
            await target.msg.respond(codec.encode(body))

    # ------------------------------------------------------------------ events out

    def _published_one(self, seq: int) -> None:
        """The events stream holds event ``seq``: the next commit drops it from the outbox."""
        self._published.append(seq)
