"""Operator routes: ``GET /v1/usage`` (usage metering) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from common import codec, messages as m, subjects
from common.usage_messages import UsageQuery, UsageReply
from scheduler.shell.http.errors import HttpError
from scheduler.shell.http.registry import Endpoint, Registry, backend_of
from scheduler.shell.http.routes import json_response
from scheduler.shell.metrics import SchedulerMetrics


@runtime_checkable
class OperatorBackend(Protocol):
    """What these routes need of the scheduler beyond ``Backend`` (``SchedulerApp`` has it)."""

    metrics: SchedulerMetrics

    async def usage(self, query: UsageQuery) -> UsageReply: ...


def _operator(request: web.Request) -> OperatorBackend:
    backend = backend_of(request)
    if not isinstance(backend, OperatorBackend):
        raise HttpError(m.ErrorCode.UNAVAILABLE, "this scheduler has no usage or metrics")
    return backend


def _usage_query(request: web.Request) -> UsageQuery:
    # An unencoded "+01:00" offset arrives as " 01:00" (a query string's "+" is a space).
    raw = {key: value.replace(" ", "+") for key, value in request.query.items()}
    try:
        return msgspec.convert(raw, UsageQuery, strict=False)
    except msgspec.ValidationError as exc:
        raise HttpError(m.ErrorCode.INVALID_REQUEST, f"invalid query: {exc}") from exc


async def get_usage(request: web.Request) -> web.StreamResponse:
    query = _usage_query(request)
    reply = await _operator(request).usage(query)
    if reply.error is not None:
        raise HttpError(reply.error.code, reply.error.detail)
    return json_response(codec.encode(reply))


async def get_metrics(request: web.Request) -> web.StreamResponse:
    body = _operator(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def register(api: Registry) -> None:
    api.add(
        Endpoint(
            "GET",
            "/v1/usage",
            get_usage,
            "getUsage",
            "Usage per VM and per size: started clock hours each VM held capacity in the "
            "window [since rounded down to the hour, until), priced per size",
            tag="usage",
            query=UsageQuery,
            response=UsageReply,
            errors=(m.ErrorCode.UNAVAILABLE,),
            subject=subjects.USAGE_GET,
        )
    )
    api.add(
        Endpoint(
            "GET",
            "/metrics",
            get_metrics,
            "getMetrics",
            "Prometheus metrics (text exposition format)",
            tag="metrics",
            media_type=CONTENT_TYPE_LATEST,
            in_openapi=False,
        )
    )
