"""The HTTP front end of the scheduler (aiohttp): the /v1 API, ``/openapi.json``, and the
portal's static files at ``/``. Started by ``SchedulerApp`` when ``http_listen`` is set.

Every mutating call needs ``Authorization: Bearer <api_token>`` when a token is configured (and
reads too with ``api_token_for_reads``); a wrong or missing token gets 401 before anything is
done. The token is never logged: the access log holds method, path, status and duration only.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from nats.aio.client import Client

from common import codec
from common.config import SchedulerConfig
from common.errors import ConfigError
from common.fields import ErrorCode
from scheduler.shell.http import (
    console,
    events,
    guards,
    migrations,
    networks,
    operations,
    routes,
    storage,
)
from scheduler.shell.http.errors import CODE_OF_STATUS, JSON, HttpError, error_response
from scheduler.shell.http.openapi import build_openapi
from scheduler.shell.http.registry import BACKEND, NATS, Backend, Endpoint, Handler, Registry

log = logging.getLogger(__name__)

ROUTE_MODULES: Final[tuple[Callable[[Registry], None], ...]] = (
    routes.register,
    storage.register,
    networks.register,
    migrations.register,
    events.register,
    operations.register,
    console.register,
)
"""Each adds its endpoints to the registry; add a module's ``register`` here to add routes."""

PORTAL_DIR: Final = Path(__file__).resolve().parent.parent / "portal"
MAX_BODY_BYTES: Final = codec.MAX_MESSAGE_BYTES
OPENAPI: Final = web.AppKey("stratus_openapi", bytes)


def parse_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:8080`` / ``[::1]:0`` / ``:8080`` (loopback) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"http_listen {value!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_registry() -> Registry:
    registry = Registry()
    for register in ROUTE_MODULES:
        register(registry)
    return registry


def build_app(config: SchedulerConfig, backend: Backend, nc: Client) -> web.Application:
    hosts = guards.allowed_hosts(config, parse_listen(config.http_listen)[0])
    registry = build_registry()
    raw_bodies: dict[tuple[str, str], str] = {
        (e.method, e.path): e.raw_body for e in registry if e.raw_body
    }
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[_errors, guards.middleware(hosts, raw_bodies)],
    )
    app[BACKEND] = backend
    app[NATS] = nc
    app[events.STREAMS] = set()
    app[events.PER_CLIENT] = config.http_max_streams_per_client
    app[events.BY_CLIENT] = {}
    for endpoint in registry:
        app.router.add_route(endpoint.method, endpoint.path, _guard(endpoint, config))
    document = build_openapi(
        registry,
        version=_version(),
        token=bool(config.api_token),
        token_for_reads=config.api_token_for_reads,
        sizes=sorted(config.all_sizes()),
    )
    app[OPENAPI] = codec.encoder.encode(document)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/", _portal_file)
    app.router.add_get("/{path:.+}", _portal_file)  # last: the portal's other files
    return app


class HttpServer:
    def __init__(self, config: SchedulerConfig, backend: Backend, nc: Client) -> None:
        self._host, self._port = parse_listen(config.http_listen)
        self._app = build_app(config, backend, nc)
        self._runner = web.AppRunner(
            self._app, access_log_class=_AccessLogger, shutdown_timeout=2.0
        )
        self.port = 0
        """The bound port (useful with port 0), known once started."""

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("http api listening host=%s port=%d", self._host, self.port)

    async def stop(self) -> None:
        streams = self._app[events.STREAMS]
        for task in list(streams):
            task.cancel()
        await self._runner.cleanup()


# --------------------------------------------------------------------------- middleware


def _guard(endpoint: Endpoint, config: SchedulerConfig) -> Handler:
    """The endpoint's handler, behind the bearer token when it needs one."""
    token = config.api_token
    if not token or endpoint.public or not (endpoint.mutating or config.api_token_for_reads):
        return endpoint.handler
    expected = f"Bearer {token}".encode()
    handler = endpoint.handler

    async def guarded(request: web.Request) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            raise HttpError(ErrorCode.UNAUTHORIZED, "missing or wrong bearer token")
        return await handler(request)

    return guarded


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON ``{"error": {"code", "detail"}}`` with its status."""
    try:
        return await handler(request)
    except HttpError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.code is ErrorCode.UNAUTHORIZED else {}
        return error_response(exc.code, exc.detail, headers=headers)
    except web.HTTPException as exc:  # aiohttp's own: no route, wrong method, body too large
        if exc.status < 400:
            raise
        fallback = ErrorCode.INVALID_REQUEST if exc.status < 500 else ErrorCode.INTERNAL
        code = CODE_OF_STATUS.get(exc.status, fallback)
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return error_response(code, exc.reason.lower(), status=exc.status, headers=allow)
    except asyncio.CancelledError:
        raise
    except Exception:  # the boundary: a bug answers 500 and the server stays up
        log.exception("http handler failed method=%s path=%s", request.method, request.path)
        return error_response(ErrorCode.INTERNAL, "internal error")


class _AccessLogger(AbstractAccessLogger):
    """Method, path (no query string), status and duration: never a header, so never a token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.debug(
            "http request method=%s path=%s status=%d duration_ms=%.1f",
            request.method,
            request.path,
            response.status,
            time * 1000,
        )


# --------------------------------------------------------------------------- documents


async def _openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=request.app[OPENAPI], content_type=JSON)


async def _portal_file(request: web.Request) -> web.StreamResponse:
    """A file of the portal (``/`` is its index.html); nothing outside its directory."""
    path = (PORTAL_DIR / request.match_info.get("path", "index.html")).resolve()
    if not path.is_relative_to(PORTAL_DIR) or not path.is_file():
        raise HttpError(ErrorCode.NOT_FOUND, f"no such page: {request.path}")
    return web.FileResponse(path)


def _version() -> str:
    try:
        return metadata.version("stratus")
    except metadata.PackageNotFoundError:
        return "0"
