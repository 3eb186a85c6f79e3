"""Usage metering, the shell side: read the VM history from the store, price it, answer.

The history is the ``vm_history`` table of the scheduler's store, written in the same
transaction as the state change it records (see ``scheduler/shell/store.py``). The events
stream on NATS ages out after a week; billing must not, and a VM running for a month would
otherwise lose the event that opened its bill.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Final

import msgspec
from nats.aio.msg import Msg

from common import codec
from common.config import SchedulerConfig
from common.errors import StoreError
from common.fields import ErrorBody, ErrorCode
from common.messages import VmEvent
from common.usage_messages import UsageQuery, UsageReply
from scheduler.core.usage import usage_report
from scheduler.shell.store import read_vm_history
from scheduler.state.cluster import ClusterState

log = logging.getLogger(__name__)

_vm_event: Final = msgspec.json.Decoder(VmEvent)
_tasks: set[asyncio.Task[None]] = set()


def invalid(detail: str) -> UsageReply:
    return UsageReply(error=ErrorBody(ErrorCode.INVALID_REQUEST, detail))


def _compute(
    rows: list[bytes],
    query: UsageQuery,
    now: datetime,
    prices: dict[str, float],
    sizes: dict[str, str],
) -> UsageReply:
    events = [_vm_event.decode(row) for row in rows]
    until = min(query.until or now, now)
    report = usage_report(events, since=query.since, until=until, prices=prices, sizes=sizes)
    return UsageReply(usage=report)


async def usage(
    config: SchedulerConfig, state: ClusterState | None, query: UsageQuery, now: datetime
) -> UsageReply:
    """Usage in the window of ``query``, up to ``now`` at the latest."""
    if query.since is not None and query.until is not None and query.since >= query.until:
        return invalid("since must be earlier than until")
    sizes: Mapping[str, str] = {} if state is None else {n: r.size for n, r in state.vms.items()}
    try:
        rows = await read_vm_history(config.db_path)
    except StoreError as exc:
        log.error("usage query failed error=%s", exc)
        return UsageReply(error=ErrorBody(ErrorCode.UNAVAILABLE, "usage history is unreadable"))
    # Decoding and summing many events is CPU work: keep it off the event loop.
    return await asyncio.to_thread(_compute, rows, query, now, config.price_table(), dict(sizes))


async def _answer(
    msg: Msg, config: SchedulerConfig, state: ClusterState | None, now: datetime
) -> None:
    try:
        query = codec.usage_query.decode(codec.empty_as_object(msg.data))
    except msgspec.DecodeError as exc:
        reply = invalid(str(exc))
    else:
        reply = await usage(config, state, query, now)
    await msg.respond(codec.encode(reply))


def answer_in_background(
    msg: Msg, config: SchedulerConfig, state: ClusterState | None, now: datetime
) -> None:
    """Answer a ``stratus.api.usage.get`` request in a task of its own, so that a long usage
    query never holds up the API subscription's other requests."""
    task = asyncio.create_task(_answer(msg, config, state, now))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
