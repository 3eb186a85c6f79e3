"""Copies of the cluster's indexes, for a copy of the state that reads are served from. Pure.

Building the read copy's indexes again from the records cost as much as building the core's
(100,000 VMs: a second of a restart); copying them costs a fraction. A copy shares what cannot
change (strings, numbers, tuples, frozen structs) and copies every container and index object
down to those. A type it does not know is refused rather than shared: an index that gains a
new kind of mutable member must be taught here, or its copy would change with the original.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import is_dataclass
from enum import Enum
from typing import Any, TypeVar, cast

import msgspec

from scheduler.state.diskindex import DiskIndex
from scheduler.state.ipam import Ipam
from scheduler.state.netindex import NetIndex

T = TypeVar("T")

_ATOMS = (str, int, float, bool, type(None), Enum, tuple, frozenset)
_INDEXES: tuple[type, ...] = (NetIndex, DiskIndex, Ipam)
"""The objects copied attribute by attribute."""


def copied(value: T) -> T:
    """A copy of ``value`` that shares nothing mutable with it."""
    return cast(T, _copy(value))


def _copy(value: Any) -> Any:
    if isinstance(value, _ATOMS) or _is_frozen(value):
        return value
    if isinstance(value, Counter):
        return Counter({key: _copy(item) for key, item in value.items()})
    if isinstance(value, defaultdict):
        return defaultdict(value.default_factory, {k: _copy(v) for k, v in value.items()})
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, set):
        for item in value:
            if not _is_atom(item):
                _refuse(item)
        return set(value)
    if isinstance(value, list):
        return [_copy(item) for item in value]
    if isinstance(value, _INDEXES):
        return _copy_object(value)
    return _refuse(value)


def _copy_object(value: Any) -> Any:
    copy = object.__new__(type(value))
    for name in _attributes(value):
        object.__setattr__(copy, name, _copy(getattr(value, name)))
    return copy


def _attributes(value: object) -> list[str]:
    slots = [
        name
        for cls in type(value).__mro__
        for name in getattr(cls, "__slots__", ())
        if hasattr(value, name) and name not in ("__dict__", "__weakref__")
    ]
    return slots + list(getattr(value, "__dict__", {}))


def _is_atom(value: object) -> bool:
    return isinstance(value, _ATOMS) or _is_frozen(value)


def _is_frozen(value: object) -> bool:
    if isinstance(value, msgspec.Struct):
        return bool(value.__struct_config__.frozen)
    if is_dataclass(value) and not isinstance(value, type):
        return bool(getattr(value, "__dataclass_params__").frozen)  # noqa: B009
    return False


def _refuse(value: object) -> Any:
    raise TypeError(f"no read copy of a {type(value).__name__}: teach scheduler/state/copying.py")
