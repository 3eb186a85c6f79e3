"""Pieces every wire message shares: constrained field types and the error body.

Split from common/messages.py (which re-exports them) so that the message modules of one
concept each (console, usage, networks) can use them without importing each other.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from common.ids import (
    HOST_ID_PATTERN,
    IMAGE_NAME_PATTERN,
    SHA256_PATTERN,
    VM_NAME_PATTERN,
    whole,
)

VmNameField = Annotated[str, msgspec.Meta(pattern=VM_NAME_PATTERN, description="[a-z0-9-]{1,63}")]
ImageNameField = Annotated[
    str, msgspec.Meta(pattern=IMAGE_NAME_PATTERN, description="[a-z0-9._-]{1,63}")
]
Sha256Field = Annotated[str, msgspec.Meta(pattern=SHA256_PATTERN)]
MAX_DATA_DISKS = 8
DiskSizeMib = Annotated[int, msgspec.Meta(ge=1, le=16 * 1024 * 1024)]
HostIdField = Annotated[str, msgspec.Meta(pattern=HOST_ID_PATTERN)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
DigestField = Annotated[str, msgspec.Meta(max_length=64)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Generation = Annotated[int, msgspec.Meta(ge=0)]
StagedNuid = Annotated[
    str, msgspec.Meta(pattern=whole(r"[A-Za-z0-9]{0,64}"), description="[A-Za-z0-9]{0,64}")
]
"""The token of staged image chunks' subject (``$O.STRATUS_IMAGES.C.<nuid>``), or empty."""


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_SIZE = "unknown_size"
    CONFLICT = "conflict"
    NOT_FOUND = "not_found"
    INSUFFICIENT_CAPACITY = "insufficient_capacity"
    INVALID_STATE = "invalid_state"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    INVALID_IMAGE = "invalid_image"
    """A create names an image the gallery does not have, or an uploaded file is not a qcow2
    or raw disk image (or not what was announced)."""
    UNAUTHORIZED = "unauthorized"
    """HTTP API only: a missing or wrong bearer token."""
    FORBIDDEN = "forbidden"
    """HTTP API only: a Host or Origin not in ``http_allowed_hosts`` (another site's page)."""
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    """HTTP API only: a mutation whose body is not declared ``application/json``."""
    TOO_MANY_REQUESTS = "too_many_requests"
    """HTTP API only: this client already holds as many event streams as it may."""
    MISSING_REQUEST_ID = "missing_request_id"
    """Jobs stream only: a job with neither a ``Nats-Msg-Id`` header nor a ``request_id``
    (without one, a redelivered or republished job could be applied twice)."""
    INVALID_NETWORK = "invalid_network"
    """A network range the cluster cannot take (not an IPv4 network, too small or too large,
    overlapping another network), an address outside its network or reserved in it (network,
    gateway, broadcast), a network in another region than the VM, two NICs in one network, an
    endpoint on a VM without a NIC, or a bad ``allow`` range."""
    ADDRESS_IN_USE = "address_in_use"
    """The address asked for is another VM's, or the public port asked for is taken on the
    VM's host."""
    NETWORK_IN_USE = "network_in_use"
    """A network cannot be deleted while VMs have a NIC in it (stopped ones included: they
    keep their addresses)."""
    NOT_MIGRATABLE = "not_migratable"
    """A live migration of a VM that cannot move live now: not running, already migrating,
    or its host's driver cannot migrate."""
    INVALID_TARGET = "invalid_target"
    """A live migration to a host that cannot take the VM: unknown, down, cordoned, full, of
    another driver kind, without an underlay address, or the VM's own host."""
    BUSY = "busy"
    """The hosts of a live migration already have as many under way as they may
    (``migration_max_per_host``): try again once one has finished."""


class ErrorBody(msgspec.Struct):
    code: ErrorCode
    detail: str
