"""The scheduler's durable store: SQLite in WAL mode through aiosqlite.

One transaction per batch of the core loop (group commit): nothing is acknowledged, sent or
published before the records it depends on are committed. Events are written to an outbox in
the same transaction and deleted once JetStream has them, so a crash never loses an event.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiosqlite
import msgspec
from msgspec.structs import replace

from common import subjects
from common.errors import StoreError
from common.messages import DiskKind, VmReply
from scheduler.state.model import HostRecord, ReplyRecord, VmRecord
from scheduler.state.storage import ImageRecord, NetCounters, VnetRecord, mib_of

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
"""2: a reply row's body is a ``ReplyRecord`` (the request its id names, and the reply), no
longer a bare ``VmReply``; ``_migrate_1_to_2`` rewrites version 1 rows.
3: virtual networks (the ``vnets`` table, the network counters in ``meta``, NICs and endpoints
in VM records): nothing to rewrite, but an older scheduler must not open the store, since it
would drop the NICs of every VM it saves.
4: live migration (a VM record's ``migration`` under way, its generation high-water mark
``max_generation`` and ``migrated_at``): ``_migrate_3_to_4`` sets each VM's high-water mark to
its generation; an older scheduler must not open the store, since it would drop a migration
under way and could reuse an attempt's generation.
5: replicated disks (a disk record's ``copies`` and the size its OS disk takes, ``image_mib``):
``_migrate_4_to_5`` gives each OS disk the size of its image in the gallery; an older scheduler
must not open the store, since it would drop the copies of every replicated disk (and then
delete them from their hosts)."""
COUNTERS_KEY = "network_counters"
REPLY_RETENTION_S = 7 * 24 * 3600.0
"""How long a request_id stays bound to its request (and keeps returning its reply)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vms (name TEXT PRIMARY KEY, state TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (host_id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS replies (
    request_id TEXT PRIMARY KEY, body BLOB NOT NULL, created_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY, subject TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS vm_history (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS images (name TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS vnets (name TEXT PRIMARY KEY, body BLOB NOT NULL);
"""
VM_EVENT_PREFIX = subjects.vm_event("")
"""Events on subjects starting with this are VM events, kept in vm_history for usage metering:
the events stream ages out, the store does not."""


@dataclass
class Loaded:
    vms: list[VmRecord]
    hosts: list[HostRecord]
    replies: dict[str, ReplyRecord]
    event_seq: int
    outbox: list[tuple[int, str, bytes]]
    images: list[ImageRecord] = field(default_factory=list)
    vnets: list[VnetRecord] = field(default_factory=list)
    counters: NetCounters = field(default_factory=NetCounters)


@dataclass
class Batch:
    vms: list[VmRecord] = field(default_factory=list)
    hosts: list[HostRecord] = field(default_factory=list)
    replies: dict[str, ReplyRecord] = field(default_factory=dict)
    events: list[tuple[int, str, bytes]] = field(default_factory=list)
    published: list[int] = field(default_factory=list)
    images: list[ImageRecord] = field(default_factory=list)
    vnets: list[VnetRecord] = field(default_factory=list)
    counters: NetCounters | None = None

    def __bool__(self) -> bool:
        return bool(
            self.vms
            or self.hosts
            or self.replies
            or self.events
            or self.published
            or self.images
            or self.vnets
            or self.counters
        )


@dataclass(frozen=True, slots=True)
class Rows:
    """A batch encoded for SQLite: a snapshot, unaffected by later changes to the records
    (so the core may go on to its next step while this one commits)."""

    vms: list[tuple[str, str, bytes]]
    hosts: list[tuple[str, bytes]]
    images: list[tuple[str, bytes]]
    replies: list[tuple[str, bytes, float]]
    events: list[tuple[int, str, bytes]]
    published: list[int]
    log_seq: int = 0
    """The state log sequence this batch is (scheduler/statelog.py); 0: not logged."""
    vnets: list[tuple[str, bytes]] = field(default_factory=list)
    counters: bytes = b""
    """The network counters (JSON), when they moved; empty: unchanged."""

    def __bool__(self) -> bool:
        return bool(
            self.vms
            or self.hosts
            or self.images
            or self.replies
            or self.events
            or self.published
            or self.log_seq
            or self.vnets
            or self.counters
        )

    def with_seq(self, seq: int) -> Rows:
        return dataclasses.replace(self, log_seq=seq)


def encode_batch(batch: Batch) -> Rows:
    now = time.time()
    return Rows(
        vms=[(r.name, r.state.value, _encoder.encode(r)) for r in batch.vms],
        hosts=[(h.host_id, _encoder.encode(h)) for h in batch.hosts],
        images=[(i.name, _encoder.encode(i)) for i in batch.images],
        replies=[(rid, _encoder.encode(reply), now) for rid, reply in batch.replies.items()],
        events=list(batch.events),
        published=list(batch.published),
        vnets=[(v.name, _encoder.encode(v)) for v in batch.vnets],
        counters=_encoder.encode(batch.counters) if batch.counters is not None else b"",
    )


class Store(Protocol):
    async def load(self) -> Loaded: ...

    async def commit(self, batch: Batch) -> None: ...

    async def write(self, rows: Rows) -> None: ...

    async def close(self) -> None: ...


_vm_decoder = msgspec.json.Decoder(VmRecord)
_host_decoder = msgspec.json.Decoder(HostRecord)
_image_decoder = msgspec.json.Decoder(ImageRecord)
_vnet_decoder = msgspec.json.Decoder(VnetRecord)
_counters_decoder = msgspec.json.Decoder(NetCounters)
_reply_decoder = msgspec.json.Decoder(ReplyRecord)
_v1_reply_decoder = msgspec.json.Decoder(VmReply)
_encoder = msgspec.json.Encoder()


class SqliteStore:
    def __init__(self, db: aiosqlite.Connection, path: str = "") -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: str | Path) -> SqliteStore:
        try:
            db = await aiosqlite.connect(str(path), isolation_level=None)
        except (aiosqlite.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.executescript(_SCHEMA)
            store = cls(db, str(path))
            await store._check_version()
        except (aiosqlite.Error, OSError, msgspec.DecodeError, StoreError) as exc:
            await db.close()  # a store refused is closed, not left to the garbage collector
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        return store

    async def _check_version(self) -> None:
        async with self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'") as cur:
            row = await cur.fetchone()
        if row is None:
            await self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"store schema {row[0]} is newer than this scheduler ({SCHEMA_VERSION})"
            )
        else:
            if int(row[0]) == 1:
                await self._db._execute(_migrate_1_to_2, self._db._conn)  # type: ignore[no-untyped-call]
            if int(row[0]) <= 3:
                await self._db._execute(_migrate_3_to_4, self._db._conn)  # type: ignore[no-untyped-call]
            if int(row[0]) <= 4:
                await self._db._execute(_migrate_4_to_5, self._db._conn)  # type: ignore[no-untyped-call]
            await self._db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )

    async def load(self) -> Loaded:
        """Every record, read and decoded in SQLite's thread in one call (at 100,000 VMs that
        takes seconds: the event loop keeps the leader lease meanwhile), from one read
        transaction: a consistent snapshot, also beside a writer."""
        db = self._db
        try:
            loaded: Loaded = await db._execute(_read_all, db._conn)  # type: ignore[no-untyped-call]
        except (sqlite3.Error, msgspec.DecodeError) as exc:
            raise StoreError(f"cannot load store: {exc}") from exc
        return loaded

    async def meta(self, key: str) -> str | None:
        """A value of the store's ``meta`` table (e.g. ``state_log_seq``)."""
        async with self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def commit(self, batch: Batch) -> None:
        """Write the whole batch in one transaction (one fsync for many changes)."""
        await self.write(encode_batch(batch))

    async def write(self, rows: Rows) -> None:
        """Write an encoded batch in one transaction, in one call to SQLite's thread.

        Awaiting each statement needed the event loop between statements, which the core's
        next step (computed while this commits) kept busy: commits took 2-4x their SQLite time.
        aiosqlite has no public call for running a function in its thread; ``_execute`` is
        the one its own methods use.
        """
        if not rows:
            return
        db = self._db
        try:
            await db._execute(_write_rows, db._conn, rows)  # type: ignore[no-untyped-call]
        except aiosqlite.Error as exc:
            raise StoreError(f"commit failed: {exc}") from exc

    async def close(self) -> None:
        await self._db.close()


_UPSERT_VM = (
    "INSERT INTO vms (name, state, body) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET state = excluded.state, body = excluded.body"
)
_UPSERT_REPLY = (
    "INSERT INTO replies (request_id, body, created_s) VALUES (?, ?, ?)"
    " ON CONFLICT (request_id) DO UPDATE SET body = excluded.body, created_s = excluded.created_s"
)
"""Upserts, not ``INSERT OR REPLACE``: a replaced row is deleted and inserted again (its
table row and its key's index entry, twice each); an upsert changes the row in place. A VM's
row is written at each state it passes (pending, scheduled, starting, running, ...)."""


def _write_rows(conn: sqlite3.Connection, rows: Rows) -> None:
    """The whole batch in one transaction (runs in aiosqlite's thread)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        if rows.vms:
            conn.executemany(_UPSERT_VM, rows.vms)
        if rows.hosts:
            conn.executemany(
                "INSERT OR REPLACE INTO hosts (host_id, body) VALUES (?, ?)", rows.hosts
            )
        if rows.images:
            conn.executemany(
                "INSERT OR REPLACE INTO images (name, body) VALUES (?, ?)", rows.images
            )
        if rows.vnets:
            conn.executemany("INSERT OR REPLACE INTO vnets (name, body) VALUES (?, ?)", rows.vnets)
        if rows.counters:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (COUNTERS_KEY, rows.counters.decode()),
            )
        if rows.replies:
            conn.executemany(_UPSERT_REPLY, rows.replies)
        if rows.events:
            _write_events(conn, rows.events)
        if rows.published:
            conn.executemany("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", _runs(rows.published))
        if rows.log_seq:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('state_log_seq', ?)",
                (str(rows.log_seq),),
            )
        conn.execute("COMMIT")
    except sqlite3.Error:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("rollback failed")
        raise


def _write_events(conn: sqlite3.Connection, events: list[tuple[int, str, bytes]]) -> None:
    """Events into the outbox (until JetStream has them), VM events into the history too."""
    conn.executemany("INSERT INTO outbox (seq, subject, body) VALUES (?, ?, ?)", events)
    history = [(seq, body) for seq, subject, body in events if _is_vm_event(subject)]
    if history:
        conn.executemany("INSERT OR IGNORE INTO vm_history (seq, body) VALUES (?, ?)", history)
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('event_seq', ?)", (str(events[-1][0]),)
    )


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """The sequences as runs of consecutive ones, ``(first, last)`` each: the events published
    since the last commit are mostly one run, deleted by one statement instead of one each."""
    runs: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        elif not runs or runs[-1][1] != seq:
            runs.append((seq, seq))
    return runs


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Version 1 stored bare VM replies: each becomes a binding that knows only its VM (it
    still answers its retries and refuses its id for another VM), in one transaction."""
    rows = conn.execute("SELECT request_id, body FROM replies").fetchall()
    try:
        conn.execute("BEGIN IMMEDIATE")
        for request_id, body in rows:
            reply = _v1_reply_decoder.decode(body)
            target = reply.vm.name if reply.vm is not None else ""
            record = ReplyRecord(op="", target=target, digest="", reply=reply)
            conn.execute(
                "UPDATE replies SET body = ? WHERE request_id = ?",
                (_encoder.encode(record), request_id),
            )
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        conn.execute("COMMIT")
    except (sqlite3.Error, msgspec.DecodeError):
        conn.execute("ROLLBACK")
        raise


def _migrate_3_to_4(conn: sqlite3.Connection) -> None:
    """Version 3 VM records had no generation high-water mark: each starts at the VM's
    generation (what it would be read as anyway, written down), in one transaction."""
    rows = conn.execute("SELECT name, body FROM vms").fetchall()
    try:
        conn.execute("BEGIN IMMEDIATE")
        for name, body in rows:
            record = _vm_decoder.decode(body)
            if record.max_generation < record.generation:
                record.max_generation = record.generation
                conn.execute(
                    "UPDATE vms SET body = ? WHERE name = ?", (_encoder.encode(record), name)
                )
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        conn.execute("COMMIT")
    except (sqlite3.Error, msgspec.DecodeError):
        conn.execute("ROLLBACK")
        raise


def _migrate_4_to_5(conn: sqlite3.Connection) -> None:
    """Version 4 disk records did not say what an OS disk takes on its host: each OS disk of
    a gallery image gets that image's size (a built-in image's stays unknown: 1 GiB is
    charged), in one transaction."""
    image_mib = {
        image.name: mib_of(image.size_bytes)
        for (body,) in conn.execute("SELECT body FROM images").fetchall()
        if (image := _image_decoder.decode(body)).size_bytes > 0
    }
    rows = conn.execute("SELECT name, body FROM vms").fetchall()
    try:
        conn.execute("BEGIN IMMEDIATE")
        for name, body in rows:
            record = _vm_decoder.decode(body)
            disks = [
                replace(d, image_mib=image_mib.get(d.image, 0)) if d.kind is DiskKind.OS else d
                for d in record.disks
            ]
            if disks != record.disks:
                record.disks = disks
                conn.execute(
                    "UPDATE vms SET body = ? WHERE name = ?", (_encoder.encode(record), name)
                )
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
        conn.execute("COMMIT")
    except (sqlite3.Error, msgspec.DecodeError):
        conn.execute("ROLLBACK")
        raise


def _is_vm_event(subject: str) -> bool:
    return subject.startswith(VM_EVENT_PREFIX)


def _read_only_uri(path: str | Path) -> str:
    return f"{Path(path).resolve().as_uri()}?mode=ro"


async def read_vm_history(path: str | Path) -> list[bytes]:
    """Every VM event ever committed (encoded), in order, through a connection of its own: it
    sees only committed transactions and never waits inside one of the core loop's."""
    try:
        async with (
            aiosqlite.connect(_read_only_uri(path), uri=True) as db,
            db.execute("SELECT body FROM vm_history ORDER BY seq") as cursor,
        ):
            return [bytes(row[0]) for row in await cursor.fetchall()]
    except aiosqlite.Error as exc:
        raise StoreError(f"cannot read vm history from {path}: {exc}") from exc


_: type[Store] = SqliteStore


def _read_all(conn: sqlite3.Connection) -> Loaded:
    """The whole store (runs in aiosqlite's thread): replies past their retention are deleted
    first, then everything is read in one transaction."""
    conn.execute("DELETE FROM replies WHERE created_s < ?", (time.time() - REPLY_RETENTION_S,))
    conn.execute("BEGIN")
    try:
        vms = [_vm_decoder.decode(body) for (body,) in conn.execute("SELECT body FROM vms")]
        hosts = [_host_decoder.decode(body) for (body,) in conn.execute("SELECT body FROM hosts")]
        images = [_image_decoder.decode(b) for (b,) in conn.execute("SELECT body FROM images")]
        vnets = [_vnet_decoder.decode(body) for (body,) in conn.execute("SELECT body FROM vnets")]
        replies = {
            request_id: _reply_decoder.decode(body)
            for request_id, body in conn.execute("SELECT request_id, body FROM replies")
        }
        meta = dict(
            conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('event_seq', ?)", (COUNTERS_KEY,)
            )
        )
        outbox = [
            (int(seq), str(subject), bytes(body))
            for seq, subject, body in conn.execute(
                "SELECT seq, subject, body FROM outbox ORDER BY seq"
            )
        ]
    finally:
        conn.execute("COMMIT")
    counters = meta.get(COUNTERS_KEY)
    return Loaded(
        vms,
        hosts,
        replies,
        int(meta.get("event_seq", 0)),
        outbox,
        images,
        vnets,
        _counters_decoder.decode(counters) if counters is not None else NetCounters(),
    )
