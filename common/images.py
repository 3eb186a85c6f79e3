"""Disk image formats the gallery accepts, recognised from their first bytes. Pure.

An image is a qcow2 file (magic ``QFI\\xfb``, version 2 or 3) or a raw disk image: a whole
number of 512-byte sectors that starts like a disk (an MBR or GPT partition table) or like a
filesystem (ext2/3/4, ISO 9660, FAT). Anything else (a text file, an archive, a truncated file)
is refused with the reason.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path

HEADER_BYTES = 64 * 1024
"""How much of the start of a file :func:`sniff_format` looks at."""
SECTOR = 512
QCOW2_MAGIC = b"QFI\xfb"


class ImageFormat(StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"


def sniff_format(header: bytes, size_bytes: int) -> ImageFormat | str:
    """The format of an image whose first bytes are ``header``; a str says why it is none."""
    if size_bytes <= 0:
        return "the file is empty"
    if header[:4] == QCOW2_MAGIC:
        version = int.from_bytes(header[4:8], "big") if len(header) >= 8 else 0
        if version in (2, 3):
            return ImageFormat.QCOW2
        return f"qcow2 version {version} is not supported (2 or 3)"
    if size_bytes % SECTOR:
        return f"not a qcow2 image, and {size_bytes} bytes is not a whole number of sectors"
    if _looks_like_disk(header):
        return ImageFormat.RAW
    return "neither a qcow2 image nor a raw disk image (no partition table or filesystem found)"


def _looks_like_disk(header: bytes) -> bool:
    checks = (
        (510, b"\x55\xaa"),  # MBR boot signature (also FAT boot sectors)
        (512, b"EFI PART"),  # GPT header
        (1080, b"\x53\xef"),  # ext2/3/4 superblock magic (offset 1024 + 56)
        (0x8001, b"CD001"),  # ISO 9660 primary volume descriptor
    )
    return any(header[at : at + len(magic)] == magic for at, magic in checks)


def read_header(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(HEADER_BYTES)


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file's bytes: an image's name in the gallery's object store."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
