"""Resource arithmetic: CPU in millicores, memory in MiB. Pure."""

from __future__ import annotations

import re

import msgspec

from common.errors import ConfigError


class Resources(msgspec.Struct, frozen=True):
    cpu_milli: int = 0
    mem_mib: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu_milli + other.cpu_milli, self.mem_mib + other.mem_mib)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu_milli - other.cpu_milli, self.mem_mib - other.mem_mib)

    def fits(self, free: Resources) -> bool:
        """True when these resources fit into ``free``."""
        return self.cpu_milli <= free.cpu_milli and self.mem_mib <= free.mem_mib

    def __str__(self) -> str:
        return f"{self.cpu_milli / 1000:g}c/{self.mem_mib / 1024:g}g"


ZERO = Resources()

_CAPACITY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)c\s*/\s*(\d+(?:\.\d+)?)([gm])\s*$", re.IGNORECASE)


def parse_capacity(text: str, *, allow_zero: bool = False) -> Resources:
    """Parse ``64c/256g`` (cores / GiB) or ``2c/1536m`` (cores / MiB).

    Zero is allowed only with ``allow_zero`` (a reservation of ``0c/0m`` keeps nothing back).
    """
    match = _CAPACITY_RE.match(text)
    if match is None:
        raise ConfigError(f"{text!r} is not like 64c/256g or 2c/1536m")
    cores, amount, unit = float(match[1]), float(match[2]), match[3].lower()
    mem_mib = amount * 1024 if unit == "g" else amount
    result = Resources(cpu_milli=round(cores * 1000), mem_mib=round(mem_mib))
    if not allow_zero and (result.cpu_milli <= 0 or result.mem_mib <= 0):
        raise ConfigError(f"capacity {text!r} must be positive")
    return result
