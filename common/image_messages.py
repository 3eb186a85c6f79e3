"""Wire schemas of the image gallery (re-exported by common/messages.py)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import msgspec

from common.fields import (
    ErrorBody,
    HostIdField,
    ImageNameField,
    RequestId,
    Sha256Field,
    ShortText,
    StagedNuid,
    VmNameField,
)
from common.paging import NextMarker, PageQuery


class ImageState(StrEnum):
    CAPTURING = "capturing"
    AVAILABLE = "available"
    FAILED = "failed"


class ImageInfo(msgspec.Struct, kw_only=True):
    name: str
    version: int
    os: str
    format: str
    size_bytes: int
    sha256: str
    """Empty for a built-in image the scheduler holds no copy of (hosts use their own)."""
    state: ImageState
    builtin: bool = False
    source_vm: str | None = None
    reason: str = ""
    created_at: datetime


class ListImages(PageQuery, kw_only=True):
    pass


class UploadImage(msgspec.Struct, kw_only=True):
    """Register an image whose bytes the caller staged in the images object store (chunks under
    ``nuid``, common/imagestore.py ``stage_image``), or that it finds stored under ``sha256``
    already (``nuid`` empty); the scheduler checks them (a qcow2 or raw disk image, of that size
    and digest) and writes the object's metadata itself."""

    name: ImageNameField
    sha256: Sha256Field
    size_bytes: Annotated[int, msgspec.Meta(gt=0)]
    os: ShortText = "linux"
    request_id: RequestId | None = None
    format: str = ""
    """Set by the scheduler from the bytes it checked (``qcow2`` or ``raw``)."""
    nuid: StagedNuid = ""
    """Where the caller staged the bytes (empty: an object ``sha256`` is stored already)."""


class ImageRef(msgspec.Struct, kw_only=True):
    name: ImageNameField
    request_id: RequestId | None = None


class ImageCaptured(msgspec.Struct, kw_only=True):
    """Agent -> scheduler: the OS disk of ``vm`` was flattened and stored (or ``error``)."""

    image: ImageNameField
    vm: VmNameField
    host_id: HostIdField
    sha256: str = ""
    size_bytes: int = 0
    format: str = "qcow2"
    error: str = ""
    request_id: RequestId | None = None
    nuid: StagedNuid = ""
    """Where the agent staged the disk's bytes (as ``UploadImage.nuid``)."""


class ImageReply(msgspec.Struct, omit_defaults=True):
    image: ImageInfo | None = None
    error: ErrorBody | None = None


class ImageListReply(msgspec.Struct, omit_defaults=True):
    images: list[ImageInfo] = []
    next: NextMarker | None = None
    error: ErrorBody | None = None
