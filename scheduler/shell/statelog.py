"""The state log: the leader's committed batches, replicated through JetStream, so that a standby
on another machine (no shared disk) holds the same store and can take over.

- The leader appends every batch (the ``Rows`` its store writes) to the stream STRATUS_STATE
  *before* writing it to SQLite and before the batch's replies and commands go out: nothing is
  acknowledged that a successor cannot see. Each append names the sequence it expects to follow
  (``Nats-Expected-Last-Sequence``): a deposed leader's append fails, which is its write fence.
- A batch bigger than ``PART_BYTES`` goes as several parts; a batch is applied only whole.
- A leader that takes over first applies everything up to the stream's last sequence, then
  appends a *fence* record expecting that sequence: from then on no earlier leader can append.
- Standbys apply the stream to their own SQLite (``Rows.log_seq`` records how far).
- Snapshots: the leader copies its SQLite file into the object store STRATUS_STATE_SNAP (it
  chunks big objects) and purges the log up to the sequence the copy holds; a standby that is
  new or behind the purge starts from the snapshot. The first leader of a cluster snapshots
  before its fence record, so a non-empty log always has a snapshot to start from.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.object_store import ObjectStore

from common import subjects
from common.errors import StratusError
from common.streams import ensure_replicas, ensure_stream
from scheduler.shell.store import Rows, SqliteStore

log = logging.getLogger(__name__)

STATE_STREAM = subjects.STATE_STREAM
STATE_SUBJECT = subjects.STATE_SUBJECT
SNAPSHOT_BUCKET = subjects.SNAPSHOT_BUCKET
SNAPSHOT_OBJECT = "latest"
PART_BYTES = 768 * 1024
"""Most bytes of a batch in one message (JetStream's default max payload is 1 MiB)."""
KIND = "Stratus-Kind"
PART = "Stratus-Part"
EPOCH = "Stratus-Epoch"
WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a failed ``Nats-Expected-Last-Sequence``."""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Rows)


def _always() -> bool:
    return True


_ALWAYS = _always


class Fenced(StratusError):
    """Another leader appended to the state log: this one must stop acting."""


class AppendUnknown(StratusError):
    """An append got no answer: it may or may not be in the log. The term ends; the process
    catches up with the log (which tells) before it may lead again."""


def state_stream_config(replicas: int) -> StreamConfig:
    return StreamConfig(
        name=STATE_STREAM,
        subjects=[STATE_SUBJECT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msg_size=1024 * 1024,
        allow_direct=True,
        num_replicas=replicas,
    )


async def ensure_state_log(js: JetStreamContext, replicas: int) -> None:
    await ensure_stream(js, state_stream_config(replicas))
    await snapshot_bucket(js, replicas)
    await ensure_replicas(js, f"OBJ_{SNAPSHOT_BUCKET}", replicas)


async def snapshot_bucket(js: JetStreamContext, replicas: int = 1) -> ObjectStore:
    try:
        return await js.object_store(SNAPSHOT_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_object_store(
            SNAPSHOT_BUCKET, storage=StorageType.FILE, replicas=replicas
        )


def split(rows: Rows) -> list[bytes]:
    """A batch as the bodies of its parts (one unless it is big)."""
    body = _encoder.encode(rows)
    return [body[i : i + PART_BYTES] for i in range(0, len(body), PART_BYTES)] or [b""]


class StateLog:
    """Appending (the leader) and applying (a standby, or a leader taking over) the state log.

    ``seq`` is the last log sequence the local store holds.
    """

    def __init__(self, js: JetStreamContext, store: SqliteStore, seq: int, *, replicas: int):
        self.js = js
        self.store = store
        self.seq = seq
        self.replicas = replicas
        self.epoch = 0
        self.appended = 0
        self._parts: list[bytes] = []

    # ------------------------------------------------------------------ the leader

    async def append(self, rows: Rows) -> Rows:
        """Append a batch; return it stamped with its log sequence (for the store's meta)."""
        if not rows:
            return rows
        bodies = split(_with_seq(rows, 0))
        for index, body in enumerate(bodies, 1):
            headers = {KIND: "batch", EPOCH: str(self.epoch), PART: f"{index}/{len(bodies)}"}
            self.seq = await self._publish(body, headers)
        self.appended += 1
        return _with_seq(rows, self.seq)

    async def fence(self, epoch: int, in_time: Callable[[], bool] = _ALWAYS) -> None:
        """Take the log over for ``epoch``: catch up, then append a fence record that makes
        every earlier leader's next append fail. Retried until it lands after the last one
        (or ``in_time`` says no: ``TimeoutError``)."""
        self.epoch = epoch
        while True:
            await self.catch_up(in_time)
            try:
                self.seq = await self._publish(b"", {KIND: "fence", EPOCH: str(epoch)})
            except Fenced:
                continue  # the previous leader's last append landed meanwhile: apply it too
            await self.store.write(_with_seq(_EMPTY, self.seq))
            log.info("state log fenced epoch=%d seq=%d", epoch, self.seq)
            return

    async def _publish(self, body: bytes, headers: dict[str, str]) -> int:
        headers["Nats-Expected-Last-Sequence"] = str(self.seq)
        try:
            ack = await self.js.publish(STATE_SUBJECT, body, headers=headers, timeout=2.0)
        except BadRequestError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise Fenced(f"state log moved past seq {self.seq}: another leader") from exc
            raise AppendUnknown(f"state log append refused: {exc!r}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise AppendUnknown(f"state log append unanswered: {exc!r}") from exc
        return int(ack.seq)

    # ------------------------------------------------------------------ applying

    async def last_seq(self) -> tuple[int, int]:
        """The stream's (first, last) sequence."""
        info = await self.js.stream_info(STATE_STREAM)
        return int(info.state.first_seq), int(info.state.last_seq)

    async def catch_up(self, in_time: Callable[[], bool] = _ALWAYS) -> int:
        """Apply every record after ``seq`` up to the stream's last; return how many.

        ``in_time`` is asked before each record; once it says no, ``TimeoutError``. Callers
        also bound the call with ``asyncio.timeout``, but that cancels once, and a library
        await that swallows the cancellation (seen under load: a standby then applied a long
        log for 24 s and ignored SIGTERM meanwhile) would leave the loop unbounded.
        """
        first, last = await self.last_seq()
        if self.seq < first - 1 or (self.seq == 0 and last > 0):
            await self.restore_snapshot()
        applied = 0
        while self.seq < last:
            if not in_time():
                raise TimeoutError(f"state log catch-up stopped at seq {self.seq} of {last}")
            try:
                msg = await self.js.get_msg(STATE_STREAM, self.seq + 1, direct=True)
            except NotFoundError:
                await self.restore_snapshot()  # purged under us: a newer snapshot exists
                continue
            await self._apply(msg.data or b"", msg.headers or {}, self.seq + 1)
            applied += 1
        return applied

    async def _apply(self, body: bytes, headers: dict[str, str], seq: int) -> None:
        if headers.get(KIND) != "batch":  # a fence: a new leader; an unfinished batch is void
            self._parts = []
            await self.store.write(_with_seq(_EMPTY, seq))
            self.seq = seq
            return
        index, count = (int(x) for x in headers.get(PART, "1/1").split("/"))
        if index == 1:
            self._parts = []
        self._parts.append(body)
        self.seq = seq
        if index < count:
            return
        rows = _decoder.decode(b"".join(self._parts))
        self._parts = []
        await self.store.write(_with_seq(rows, seq))

    # ------------------------------------------------------------------ snapshots

    async def take_snapshot(self, db_path: str) -> int:
        """Copy the store (a consistent read beside the writer) into the object store, then
        purge the log up to the sequence the copy holds. Returns that sequence."""
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "snapshot.db"
            seq = await asyncio.to_thread(_backup, db_path, copy)
            bucket = await snapshot_bucket(self.js, self.replicas)
            with copy.open("rb") as file:
                await bucket.put(SNAPSHOT_OBJECT, file)
        if seq > 0:
            await self.js.purge_stream(STATE_STREAM, seq=seq + 1)  # keep seq + 1 onwards
        log.info("state snapshot taken seq=%d", seq)
        return seq

    async def has_snapshot(self) -> bool:
        bucket = await snapshot_bucket(self.js, self.replicas)
        try:
            info = await bucket.get_info(SNAPSHOT_OBJECT)
        except (ObjectNotFoundError, NotFoundError):
            return False
        return not info.deleted

    async def restore_snapshot(self) -> None:
        """Replace the local store with the newest snapshot (a standby's store only)."""
        bucket = await snapshot_bucket(self.js, self.replicas)
        path = self.store.path
        tmp = Path(f"{path}.snapshot")
        file = await asyncio.to_thread(tmp.open, "wb")
        try:
            await bucket.get(SNAPSHOT_OBJECT, writeinto=file)
        except (ObjectNotFoundError, NotFoundError) as exc:
            raise StratusError("the state log was purged but holds no snapshot") from exc
        finally:
            file.close()
        await self.store.close()
        await asyncio.to_thread(_replace_db, tmp, path)
        self.store = await SqliteStore.open(path)
        self.seq = int(await self.store.meta("state_log_seq") or 0)
        self._parts = []
        log.info("state restored from snapshot seq=%d", self.seq)


_EMPTY = Rows([], [], [], [], [], [])


def _with_seq(rows: Rows, seq: int) -> Rows:
    return rows.with_seq(seq)


def _replace_db(new: Path, path: str) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(new, path)


def _backup(db_path: str, dest: Path) -> int:
    source = sqlite3.connect(db_path)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
            row = target.execute("SELECT value FROM meta WHERE key = 'state_log_seq'").fetchone()
        finally:
            target.close()
    finally:
        source.close()
    return int(row[0]) if row else 0
