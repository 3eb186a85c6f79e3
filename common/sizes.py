"""Sizes as people type them: disk sizes in one syntax (``1G``, ``512M``, ``1024``) and VM size
names in any case (``small`` is ``Small``). Pure; shared by the CLI and the scheduler."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([MGT])(?:I?B)?)?", re.IGNORECASE)
_UNIT_MIB = {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
T = TypeVar("T")
SIZE_HINT = "like 1G, 512M or 1024 (MiB)"


def parse_size_mib(text: str) -> int:
    """``1G`` -> 1024, ``512M`` -> 512, ``1024`` -> 1024 (a plain number is MiB); binary units,
    any case, an optional ``iB``/``B``. ``ValueError`` saying what is expected otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r} ({SIZE_HINT})")
    mib = float(match[1]) * _UNIT_MIB[(match[2] or "").upper()]
    if mib != int(mib):
        raise ValueError(f"size {text!r} is not a whole number of MiB")
    if mib < 1:
        raise ValueError(f"size {text!r} is too small: at least 1 MiB")
    return int(mib)


def find_size(sizes: Mapping[str, T], name: str) -> T | None:
    """The size called ``name`` in any case (``small`` finds ``Small``); None if none is."""
    if name in sizes:
        return sizes[name]
    folded = name.casefold()
    return next((size for key, size in sizes.items() if key.casefold() == folded), None)
