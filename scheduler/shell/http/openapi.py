"""``/openapi.json``: the OpenAPI 3.1 document of the HTTP API, made from the route table and the
msgspec structs (``msgspec.json.schema_components``), so it cannot drift from the code."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Final

import msgspec

from common.fields import ErrorCode
from common.messages import ErrorReply
from scheduler.shell.http.errors import status_of
from scheduler.shell.http.registry import Endpoint

Json = dict[str, Any]
REF: Final = "#/components/schemas/{name}"
TITLE: Final = "Stratus API"
BEARER: Final = {
    "type": "http",
    "scheme": "bearer",
    "description": "The scheduler's `api_token`: mutations need it whenever one is configured, "
    "reads too with `api_token_for_reads`. The operations that need it under this scheduler's "
    "configuration say so in their `security`.",
}


EVENT_STREAM: Final = "text/event-stream"
SSE_EVENT: Final[Json] = {
    "type": "object",
    "description": "One server-sent event (before Open API 3.2, the schema of a "
    "text/event-stream response describes each event): its type, its data (JSON text), and "
    "the id to resume from.",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def build_openapi(
    endpoints: Iterable[Endpoint],
    *,
    version: str,
    token: bool,
    token_for_reads: bool,
    sizes: Sequence[str] = (),
) -> Json:
    """The document for ``endpoints``. ``token``: a bearer token is configured (mutations need
    it, and reads too with ``token_for_reads``). ``sizes``: the catalogue, which the size of a
    new VM, and the marker of a page of sizes, must be one of."""
    listed = [e for e in endpoints if e.in_openapi]
    structs: set[type[msgspec.Struct]] = {ErrorReply}
    for e in listed:
        structs.update(t for t in (e.body, e.query, e.response) if t is not None)
        structs.update(kind for _, kind, _ in e.path_params)
    ordered = sorted(structs, key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(ordered, ref_template=REF)
    if sizes and "CreateVm" in components:
        components["CreateVm"]["properties"]["size"] = {"type": "string", "enum": list(sizes)}
    if sizes and "ListSizes" in components:  # sizes keep the catalogue's order: a marker names one
        components["ListSizes"]["properties"]["marker"] = {"type": "string", "enum": list(sizes)}
    paths: dict[str, Json] = defaultdict(dict)
    for e in listed:
        secured = token and not e.public and (e.mutating or token_for_reads)
        paths[e.path][e.method.lower()] = _operation(e, components, secured=secured)
    document: Json = {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": version,
            "description": 'Errors are JSON `{"error": {"code", "detail"}}` with the codes '
            "of the NATS API. Mutations are answered after they are committed.",
        },
        "paths": dict(paths),
        "components": {"schemas": components},
    }
    document["components"]["securitySchemes"] = {"bearer": BEARER}
    return document


def _operation(e: Endpoint, components: Json, *, secured: bool) -> Json:
    op: Json = {"operationId": e.operation_id, "summary": e.summary, "tags": [e.tag]}
    params = _parameters(e, components)
    if params:
        op["parameters"] = params
    if e.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(e.body)}},
        }
    elif e.raw_body:
        schema = {"type": "string", "format": "binary"}
        op["requestBody"] = {"required": True, "content": {e.raw_body: {"schema": schema}}}
    success: Json = {"description": "OK"}
    if e.response is not None:
        success["content"] = {e.media_type: {"schema": _ref(e.response)}}
    elif e.media_type == EVENT_STREAM:
        success["content"] = {e.media_type: {"schema": SSE_EVENT}}
    elif e.media_type != "application/json":
        success["content"] = {e.media_type: {"schema": {"type": "string"}}}
    op["responses"] = {str(e.status): success, **_errors(e, secured=secured)}
    if secured:
        op["security"] = [{"bearer": []}]
    if e.subject:
        op["x-nats-subject"] = e.subject
    return op


def _parameters(e: Endpoint, components: Json) -> list[Json]:
    params: list[Json] = []
    for name, kind, field in e.path_params:
        schema = _not_null(components[kind.__name__]["properties"][field])
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if e.query is not None:
        for name, schema in components[e.query.__name__]["properties"].items():
            param: Json = {"name": name, "in": "query", "required": False}
            param["schema"] = _not_null(schema)
            params.append(param)
    for name, description in e.headers:
        schema = {"type": "string", "minLength": 1, "maxLength": 128}
        params.append(
            {"name": name, "in": "header", "required": False, "description": description}
            | {"schema": schema}
        )
    return params


def _errors(e: Endpoint, *, secured: bool) -> dict[str, Json]:
    codes: set[ErrorCode] = {*e.errors, ErrorCode.FORBIDDEN}  # Host/Origin not allowed
    has_body = e.body is not None or bool(e.raw_body)
    if has_body or e.mutating:
        codes.add(ErrorCode.UNSUPPORTED_MEDIA_TYPE)
    if e.path_params or e.query is not None or has_body or e.headers:
        codes.add(ErrorCode.INVALID_REQUEST)
    if e.path_params:
        codes.add(ErrorCode.NOT_FOUND)
    if has_body:
        codes.add(ErrorCode.TOO_LARGE)
    if e.mutating or e.media_type == "text/event-stream":
        codes.add(ErrorCode.UNAVAILABLE)
    if e.media_type == "text/event-stream":
        codes.add(ErrorCode.TOO_MANY_REQUESTS)
    if secured:
        codes.add(ErrorCode.UNAUTHORIZED)
    by_status: dict[int, list[str]] = defaultdict(list)
    for code in codes:
        by_status[status_of(code)].append(code.value)
    return {
        str(status): {
            "description": "Error: " + ", ".join(sorted(names)),
            "content": {"application/json": {"schema": _ref(ErrorReply)}},
        }
        for status, names in sorted(by_status.items())
    }


def _ref(kind: type[msgspec.Struct]) -> Json:
    return {"$ref": REF.format(name=kind.__name__)}


def _not_null(schema: Json) -> Json:
    """A parameter is absent rather than null: drop the ``null`` branch of an optional field."""
    options = schema.get("anyOf")
    if options is None:
        return {k: v for k, v in schema.items() if k != "default"}
    kept = [o for o in options if o != {"type": "null"}]
    return kept[0] if len(kept) == 1 else {"anyOf": kept}
