"""The host's capacity: declared (simulated hosts) or measured (the only module using psutil)."""

from __future__ import annotations

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv

from common.errors import ConfigError
from common.resources import Resources, parse_capacity

_MIB = 1024 * 1024


def measure_capacity(reserved: Resources) -> Resources:
    """This machine's logical CPUs and memory, minus what is kept back for the host itself."""
    cpu_milli = (psutil.cpu_count(logical=True) or 1) * 1000
    mem_mib = psutil.virtual_memory().total // _MIB
    capacity = Resources(cpu_milli, mem_mib) - reserved
    if capacity.cpu_milli <= 0 or capacity.mem_mib <= 0:
        raise ConfigError(
            f"reserved {reserved} leaves nothing of the measured {Resources(cpu_milli, mem_mib)}"
        )
    return capacity


def host_capacity(declared: str, reserved: str) -> Resources:
    """``declared`` (like ``64c/256g``) when given, else the measured capacity."""
    if declared:
        return parse_capacity(declared)
    return measure_capacity(parse_capacity(reserved, allow_zero=True))
