"""A VM's serial console over HTTP (the portal's ``/console.html?vm=NAME``), relayed from the
NATS console its host's agent serves (hostagent/console.py):

- ``GET /v1/vms/{name}/console``: server-sent events; first ``attached`` (host, writable, the
  recent output), then ``output`` as the VM writes, and ``closed`` when it leaves its host.
  Each ``output`` is a ``ConsoleOutput`` (``data`` base64, ``offset`` to splice on the tail).
- ``GET /v1/vms/{name}/console/tail``: the recent output (``ConsoleReply``), as ``vm logs``.
- ``POST /v1/vms/{name}/console/input``: type text on it (``ConsoleTyping``, sent as UTF-8),
  as ``vm console`` does.

Token rules are the API's: reading is a read, typing a mutation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Final

import msgspec
from aiohttp import web
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from common import codec, messages as m, subjects
from common.console import console_host
from common.console_messages import (
    MAX_CONSOLE_INPUT_BYTES,
    MAX_CONSOLE_TAIL_BYTES,
    ConsoleInput,
    ConsoleOutput,
    ConsoleReply,
    ConsoleTail,
)
from common.errors import ApiError
from scheduler.shell.http.errors import HttpError
from scheduler.shell.http.events import MAX_STREAMS, STREAMS
from scheduler.shell.http.registry import NATS, Endpoint, Registry, backend_of
from scheduler.shell.http.routes import body_of, json_response, query_of, vm_ref

log = logging.getLogger(__name__)

AGENT_TIMEOUT_S: Final = 5.0
CLIENT_CHECK_S: Final = 1.0
KEEPALIVE_S: Final = 15.0
ATTACH_TAIL_BYTES: Final = 16 * 1024


class TailQuery(msgspec.Struct, kw_only=True):
    max_bytes: Annotated[int, msgspec.Meta(ge=0, le=MAX_CONSOLE_TAIL_BYTES)] = 64 * 1024


class ConsoleTyping(msgspec.Struct, kw_only=True):
    """Text typed on the console (what a browser has); NATS takes raw bytes (ConsoleInput)."""

    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CONSOLE_INPUT_BYTES // 4)]


class Attached(msgspec.Struct, kw_only=True):
    """The first event of a console stream."""

    vm: str
    host: str
    writable: bool
    output: ConsoleOutput


def _host_of(request: web.Request) -> tuple[str, str]:
    """(vm name, host) of the VM in the path; 404 or 409 when it has no console."""
    ref = vm_ref(request)
    raw = backend_of(request).read(subjects.VM_GET, codec.encode(m.VmRef(name=ref.name)))
    reply = codec.vm_reply.decode(raw)
    if reply.error is not None:
        raise HttpError(reply.error.code, reply.error.detail)
    assert reply.vm is not None
    try:
        return reply.vm.name, console_host(reply.vm)
    except ApiError as exc:
        raise HttpError(m.ErrorCode(exc.code), exc.detail) from exc


async def _ask_agent(request: web.Request, subject: str, body: msgspec.Struct) -> ConsoleReply:
    host = subject.split(".")[2]
    try:
        msg = await request.app[NATS].request(subject, codec.encode(body), timeout=AGENT_TIMEOUT_S)
    except (NoRespondersError, NatsTimeoutError) as exc:
        detail = f"host {host} does not answer for this console"
        raise HttpError(m.ErrorCode.UNAVAILABLE, detail) from exc
    reply = codec.console_reply.decode(msg.data)
    if reply.error is not None:
        raise HttpError(reply.error.code, reply.error.detail)
    return reply


async def get_tail(request: web.Request) -> web.StreamResponse:
    query = query_of(request, TailQuery)
    name, host = _host_of(request)
    tail = ConsoleTail(max_bytes=query.max_bytes)
    reply = await _ask_agent(request, subjects.console_tail(host, name), tail)
    return json_response(codec.encode(reply))


async def post_input(request: web.Request) -> web.StreamResponse:
    typed = await body_of(request, ConsoleTyping)
    name, host = _host_of(request)
    body = ConsoleInput(data=typed.text.encode("utf-8", "surrogatepass"))
    reply = await _ask_agent(request, subjects.console_input(host, name), body)
    return json_response(codec.encode(reply))


async def stream_console(request: web.Request) -> web.StreamResponse:
    name, host = _host_of(request)
    streams = request.app[STREAMS]
    if len(streams) >= MAX_STREAMS:
        raise HttpError(m.ErrorCode.UNAVAILABLE, f"too many streams (limit {MAX_STREAMS})")
    follow = await request.app[NATS].subscribe(subjects.console_output(host, name))
    task = asyncio.current_task()
    assert task is not None
    streams.add(task)
    try:
        tail = ConsoleTail(max_bytes=ATTACH_TAIL_BYTES)
        reply = await _ask_agent(request, subjects.console_tail(host, name), tail)
        assert reply.output is not None
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        attached = Attached(vm=name, host=host, writable=reply.writable, output=reply.output)
        await response.write(b"event: attached\ndata: " + codec.encode(attached) + b"\n\n")
        await _relay(request, response, follow)
        return response
    finally:
        streams.discard(task)
        with contextlib.suppress(Exception):
            await follow.unsubscribe()


async def _relay(request: web.Request, response: web.StreamResponse, follow: Subscription) -> None:
    """Console events to the client until it leaves or the console closes."""
    quiet_s = 0.0
    try:
        while _connected(request):
            try:
                msg = await follow.next_msg(timeout=CLIENT_CHECK_S)
            except NatsTimeoutError:
                quiet_s += CLIENT_CHECK_S
                if quiet_s >= KEEPALIVE_S:
                    quiet_s = 0.0
                    await response.write(b": keepalive\n\n")
                continue
            try:
                event = codec.console_event.decode(msg.data)
            except msgspec.DecodeError:
                continue
            kind = "output" if isinstance(event, ConsoleOutput) else "closed"
            await response.write(f"event: {kind}\ndata: ".encode() + msg.data + b"\n\n")
            if kind == "closed":
                return
    except ConnectionResetError:
        log.debug("console stream closed by the client")


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


_VM_PATH = (("name", m.VmRef, "name"),)
_FAILS = (m.ErrorCode.NOT_FOUND, m.ErrorCode.INVALID_STATE, m.ErrorCode.UNAVAILABLE)


def register(api: Registry) -> None:
    tag = "console"
    api.add(Endpoint("GET", "/v1/vms/{name}/console", stream_console, "streamVmConsole",
                     "Server-sent events: the VM's serial console (attached, output, closed)",
                     tag=tag, path_params=_VM_PATH, media_type="text/event-stream",
                     errors=_FAILS))  # fmt: skip
    api.add(Endpoint("GET", "/v1/vms/{name}/console/tail", get_tail, "getVmConsoleTail",
                     "The VM's recent console output", tag=tag, path_params=_VM_PATH,
                     query=TailQuery, response=ConsoleReply, errors=_FAILS))  # fmt: skip
    api.add(Endpoint("POST", "/v1/vms/{name}/console/input", post_input, "typeOnVmConsole",
                     "Type on the VM's serial console (where its driver relays input)", tag=tag,
                     mutating=True, path_params=_VM_PATH, body=ConsoleTyping,
                     response=ConsoleReply, errors=_FAILS))  # fmt: skip
