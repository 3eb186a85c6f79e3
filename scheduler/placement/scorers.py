"""Placement scorers: how good a host is for a VM, as a float in [0.0, 1.0]. Pure.

Higher is better. Scorers assume the host passed the filters, but still stay in [0.0, 1.0] for
any host. Choosing between scorers, and breaking ties, happens in the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

from scheduler.state.model import HostView, PlacementRequest

Scorer = Callable[[PlacementRequest, HostView], float]
"""Must return a value in [0.0, 1.0]; higher is better."""


def score_binpack(req: PlacementRequest, host: HostView) -> float:
    """Best fit: the less capacity the host has left after placing, the higher the score."""
    return 1.0 - _free_fraction_after(req, host)


def score_spread(req: PlacementRequest, host: HostView) -> float:
    """Spread: the more capacity the host has left after placing, the higher the score."""
    return _free_fraction_after(req, host)


def _free_fraction_after(req: PlacementRequest, host: HostView) -> float:
    """Mean of the CPU and memory fractions of schedulable capacity left free after placing."""
    schedulable, allocated, wanted = host.schedulable, host.allocated, req.resources
    # What is free after placing: schedulable - allocated - wanted (host.free, unbuilt).
    cpu = _fraction(
        schedulable.cpu_milli - allocated.cpu_milli - wanted.cpu_milli, schedulable.cpu_milli
    )
    mem = _fraction(schedulable.mem_mib - allocated.mem_mib - wanted.mem_mib, schedulable.mem_mib)
    return (cpu + mem) / 2


def _fraction(part: int, whole: int) -> float:
    """``part / whole`` clamped to [0.0, 1.0]; 0.0 when there is no ``whole``."""
    if whole <= 0:
        return 0.0
    fraction = part / whole
    return 0.0 if fraction < 0.0 else 1.0 if fraction > 1.0 else fraction
