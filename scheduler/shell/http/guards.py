"""Guards in front of every route, against other web pages in the user's browser.

A page on any site can make the browser send a "simple" cross-site POST (a form, or ``fetch``
with ``text/plain``) to the API on localhost, and with no ``api_token`` nothing else would stop
it; a DNS-rebinding page can even read the answers. So:

- a request must name one of our hosts in ``Host`` (and in ``Origin`` when the browser sends
  one), else 403 ``forbidden``: the loopback names, the listen address and
  ``http_allowed_hosts``;
- a mutating request with a body must say ``application/json``, else 415
  ``unsupported_media_type`` (a browser only sends that type cross-site after a CORS preflight,
  which this server never grants; a body-less cross-site POST carries an ``Origin``). A route
  that takes raw bytes (an image upload) wants its own type instead, ``application/octet-stream``,
  which is no more "simple" than JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from yarl import URL

from common.config import SchedulerConfig
from common.fields import ErrorCode
from scheduler.shell.http.errors import JSON, HttpError
from scheduler.shell.http.registry import Handler

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_ADDRESSES: Final = frozenset({"", "0.0.0.0", "::"})
ANY_HOST: Final = "*"
"""In ``http_allowed_hosts``: accept any Host and Origin (behind a proxy that checks them)."""


def allowed_hosts(config: SchedulerConfig, listen_host: str) -> frozenset[str]:
    """Host names (no ports, lower case) a request may address."""
    names = {name.lower().strip("[]") for name in config.http_allowed_hosts} | LOOPBACK_NAMES
    if listen_host not in _WILDCARD_ADDRESSES:
        names.add(listen_host.lower())
    return frozenset(names)


def _host_name(authority: str) -> str | None:
    """``name``, ``name:port`` or ``[v6]:port`` -> the lower-case name, None if malformed."""
    try:
        return URL(f"http://{authority}").host
    except ValueError:
        return None


def _origin_name(origin: str) -> str | None:
    try:
        url = URL(origin)
    except ValueError:
        return None
    return url.host if url.scheme in ("http", "https") else None


def check_request(
    request: web.Request, hosts: Iterable[str], *, mutating: bool, body_type: str = JSON
) -> None:
    """Raise ``HttpError`` when the request is not for us, or is a non-JSON mutation."""
    names = frozenset(hosts)
    if ANY_HOST not in names:
        host = _host_name(request.headers.get(hdrs.HOST, ""))
        if host is None or host not in names:
            raise HttpError(ErrorCode.FORBIDDEN, "Host is not one of http_allowed_hosts")
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and _origin_name(origin) not in names:
            raise HttpError(ErrorCode.FORBIDDEN, "Origin is not one of http_allowed_hosts")
    has_body = request.body_exists and request.content_length != 0
    if mutating and has_body and request.content_type != body_type:
        detail = f"the body must be {body_type}, not {request.content_type}"
        raise HttpError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, detail)


SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def middleware(hosts: frozenset[str], raw_bodies: Mapping[tuple[str, str], str] = {}) -> Middleware:
    """The guards for every request (routes, documents and the portal's files alike).
    ``raw_bodies``: (method, path template) -> the media type of a route's non-JSON body."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else ""
        body_type = raw_bodies.get((request.method, template), JSON)
        mutating = request.method not in SAFE_METHODS
        check_request(request, hosts, mutating=mutating, body_type=body_type)
        return await handler(request)

    return guard
