"""Error codes to HTTP statuses, and the JSON error body ``{"error": {"code", "detail"}}``.

The codes are those of the NATS API (``common.messages.ErrorCode``):

| code | status | why |
|---|---|---|
| invalid_request | 400 | malformed JSON, a field out of its schema, a bad query or path value |
| unauthorized | 401 | missing or wrong bearer token (nothing was done) |
| forbidden | 403 | a Host or Origin header not in ``http_allowed_hosts`` (nothing was done) |
| not_found | 404 | no such VM, host, image or route |
| conflict | 409 | a VM (or network) of that name exists with another spec |
| invalid_state | 409 | the VM's current state forbids the operation (e.g. being deleted) |
| insufficient_capacity | 409 | the cluster as it is cannot hold it (too big for every host; a drain
  with no room elsewhere); may succeed once the cluster changes |
| too_large | 413 | body over the size limit |
| unsupported_media_type | 415 | a mutation whose body is not ``application/json`` (nothing done) |
| address_in_use | 409 | the address (or public port) asked for is held by another VM |
| network_in_use | 409 | a network VMs still have a NIC in cannot be deleted |
| unknown_size | 422 | the request names a size the catalogue does not have |
| invalid_network | 422 | a network range or address the cluster cannot take (overlapping,
  too small or large, outside the network, reserved, another region) |
| invalid_image | 422 | an uploaded file is not a disk image (or not the announced one) |
| too_many_requests | 429 | the client already holds its ``http_max_streams_per_client`` streams |
| unavailable | 503 | the scheduler did not answer in time, or too many event streams |
| internal | 500 | a bug (logged) |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiohttp import web

from common import codec
from common.fields import ErrorBody, ErrorCode
from common.messages import ErrorReply

STATUS: Final[Mapping[ErrorCode, int]] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.MISSING_REQUEST_ID: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.INVALID_STATE: 409,
    ErrorCode.INSUFFICIENT_CAPACITY: 409,
    ErrorCode.ADDRESS_IN_USE: 409,
    ErrorCode.NETWORK_IN_USE: 409,
    ErrorCode.NOT_MIGRATABLE: 409,
    ErrorCode.INVALID_TARGET: 409,
    ErrorCode.BUSY: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.TOO_MANY_REQUESTS: 429,
    ErrorCode.UNKNOWN_SIZE: 422,
    ErrorCode.INVALID_IMAGE: 422,
    ErrorCode.INVALID_NETWORK: 422,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}

CODE_OF_STATUS: Final[Mapping[int, ErrorCode]] = {
    400: ErrorCode.INVALID_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID_REQUEST,
    413: ErrorCode.TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    429: ErrorCode.TOO_MANY_REQUESTS,
}
"""For aiohttp's own errors (no route, wrong method, body too large)."""

JSON: Final = "application/json"


class HttpError(Exception):
    """Raised by a handler to answer with an error body; the middleware turns it into one."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def status_of(code: ErrorCode) -> int:
    return STATUS.get(code, 400)


def error_response(
    code: ErrorCode, detail: str, *, status: int | None = None, headers: Mapping[str, str] = {}
) -> web.Response:
    body = codec.encode(ErrorReply(error=ErrorBody(code=code, detail=detail)))
    return web.Response(
        body=body,
        status=status or status_of(code),
        content_type=JSON,
        headers=headers,
    )
