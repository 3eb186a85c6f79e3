"""Recognising qcow2 and raw disk images from their first bytes."""

from __future__ import annotations

import pytest

from common.images import ImageFormat, sniff_format

MIB = 1024 * 1024


def at(offset: int, magic: bytes, size: int = 64 * 1024) -> bytes:
    header = bytearray(size)
    header[offset : offset + len(magic)] = magic
    return bytes(header)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (b"QFI\xfb\x00\x00\x00\x03" + bytes(64), 5 * MIB + 7, ImageFormat.QCOW2),
        (b"QFI\xfb\x00\x00\x00\x02" + bytes(64), 4096, ImageFormat.QCOW2),
        (at(510, b"\x55\xaa"), 8 * MIB, ImageFormat.RAW),
        (at(512, b"EFI PART"), 8 * MIB, ImageFormat.RAW),
        (at(1080, b"\x53\xef"), 64 * MIB, ImageFormat.RAW),
        (at(0x8001, b"CD001"), 8 * MIB, ImageFormat.RAW),
    ],
    ids=["qcow2-v3", "qcow2-v2", "mbr", "gpt", "ext4", "iso9660"],
)
def test_images_are_recognised(header: bytes, size: int, expected: ImageFormat) -> None:
    assert sniff_format(header, size) is expected


@pytest.mark.parametrize(
    ("header", "size", "why"),
    [
        (b"not a disk image\n", 17, "whole number of sectors"),
        (bytes(4096), 4096, "neither a qcow2 image nor a raw disk image"),
        (b"QFI\xfb\x00\x00\x00\x09", 4096, "qcow2 version 9"),
        (b"", 0, "empty"),
    ],
    ids=["text", "zeros", "qcow2-v9", "empty"],
)
def test_other_files_are_refused_with_the_reason(header: bytes, size: int, why: str) -> None:
    result = sniff_format(header, size)
    assert isinstance(result, str) and not isinstance(result, ImageFormat)
    assert why in result
