"""GET /v1/events: the JetStream events stream (``stratus.events.>``) as server-sent events.

Each event is sent as ``id: <stream sequence>``, ``event: <vm|host|job_rejected>`` and
``data: <the event's JSON>``. Without ``since`` only new events are sent; ``?since=N`` (or the
``Last-Event-ID`` header a browser sends when it reconnects) replays those after stream
sequence N first. A comment line every ``KEEPALIVE_S`` keeps proxies from closing the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Annotated, Final

import msgspec
from aiohttp import web
from multidict import MultiDict
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy

from common import subjects
from common.fields import ErrorCode
from scheduler.shell.http.errors import HttpError
from scheduler.shell.http.registry import NATS, Endpoint, Registry
from scheduler.shell.http.routes import parse_query

log = logging.getLogger(__name__)

KEEPALIVE_S: Final = 15.0
CLIENT_CHECK_S: Final = 1.0
MAX_STREAMS: Final = 64
"""Concurrent event streams served; more get 503 (each holds a JetStream consumer)."""
STREAMS: Final[web.AppKey[set[asyncio.Task[object]]]] = web.AppKey("stratus_event_streams")
PER_CLIENT: Final[web.AppKey[int]] = web.AppKey("stratus_event_streams_per_client", int)
"""Concurrent streams one client address may hold; more get 429."""
BY_CLIENT: Final[web.AppKey[dict[str, int]]] = web.AppKey("stratus_event_streams_by_client")
"""Streams held per client address."""


@contextlib.contextmanager
def _client_slot(request: web.Request) -> Iterator[None]:
    """Hold one of the client's stream places for the stream's life (429 when none is free)."""
    by_client = request.app[BY_CLIENT]
    client = request.remote or ""
    limit = request.app.get(PER_CLIENT, MAX_STREAMS)
    if by_client.get(client, 0) >= limit:
        detail = f"this client already holds {limit} event streams"
        raise HttpError(ErrorCode.TOO_MANY_REQUESTS, detail)
    by_client[client] = by_client.get(client, 0) + 1
    try:
        yield
    finally:
        by_client[client] -= 1
        if not by_client[client]:
            del by_client[client]


class EventsQuery(msgspec.Struct, kw_only=True):
    since: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Replay the events after this stream sequence (the SSE ``id``) first; 0 replays all."""


class _Kind(msgspec.Struct):
    type: str
    """The tag of ``common.messages.Event``: vm, host or job_rejected."""


_kind: Final = msgspec.json.Decoder(_Kind)


def _since(request: web.Request) -> int | None:
    query = MultiDict(request.query)
    last_id = request.headers.get("Last-Event-ID")
    if "since" not in query and last_id is not None:
        query["since"] = last_id
    return parse_query(query, EventsQuery).since


def _consumer(since: int | None) -> ConsumerConfig:
    if since is None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.NEW, inactive_threshold=30.0)
    return ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=since + 1,
        inactive_threshold=30.0,
    )


async def stream_events(request: web.Request) -> web.StreamResponse:
    since = _since(request)
    if len(request.app[STREAMS]) >= MAX_STREAMS:
        raise HttpError(ErrorCode.UNAVAILABLE, f"too many event streams (limit {MAX_STREAMS})")
    with _client_slot(request):
        return await _stream(request, since)


async def _stream(request: web.Request, since: int | None) -> web.StreamResponse:
    streams = request.app[STREAMS]
    js = request.app[NATS].jetstream()
    sub = await js.subscribe(
        subjects.EVENTS_WILDCARD,
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        config=_consumer(since),
    )
    task = asyncio.current_task()
    assert task is not None
    streams.add(task)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        await response.prepare(request)
        await response.write(b": stratus events\n\n")
        quiet_s = 0.0
        while _connected(request):
            try:
                msg = await sub.next_msg(timeout=CLIENT_CHECK_S)
            except NatsTimeoutError:
                quiet_s += CLIENT_CHECK_S
                if quiet_s >= KEEPALIVE_S:
                    quiet_s = 0.0
                    await response.write(b": keepalive\n\n")
                continue
            kind = _kind.decode(msg.data).type
            frame = f"id: {msg.metadata.sequence.stream}\nevent: {kind}\ndata: ".encode()
            await response.write(frame + msg.data + b"\n\n")
    except ConnectionResetError:
        log.debug("event stream closed by the client")
    finally:
        streams.discard(task)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return response


def _connected(request: web.Request) -> bool:
    """Whether the client is still there: a closed stream frees its place within
    ``CLIENT_CHECK_S`` instead of at the next keepalive."""
    transport = request.transport
    return transport is not None and not transport.is_closing()


def register(api: Registry) -> None:
    api.add(
        Endpoint(
            "GET",
            "/v1/events",
            stream_events,
            "streamEvents",
            "Server-sent events: every VM and host state change and rejected job, as committed",
            tag="events",
            query=EventsQuery,
            media_type="text/event-stream",
            headers=(("Last-Event-ID", "Resume after this stream sequence (as ?since)."),),
        )
    )
