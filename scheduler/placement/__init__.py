"""Placement: pure filters, scorers and the pipeline that composes them."""

from scheduler.placement.filters import Reason
from scheduler.placement.index import place_batch
from scheduler.placement.pipeline import Placed, PlacementPolicy, Unplaceable, could_ever_fit, place

__all__ = [
    "Placed",
    "PlacementPolicy",
    "Reason",
    "Unplaceable",
    "could_ever_fit",
    "place",
    "place_batch",
]
