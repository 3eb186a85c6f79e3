"""Wire schemas of usage metering (re-exported by common/messages.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from common.fields import ErrorBody

# --------------------------------------------------------------------------- usage metering
# stratus.api.usage.get (UsageQuery -> UsageReply) and GET /v1/usage?since=&until=.

AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


class UsageQuery(msgspec.Struct, kw_only=True):
    """A usage window: the clock hours that begin in [since, until). Defaults: since the first
    recorded event, until now."""

    since: AwareTime | None = None
    until: AwareTime | None = None


class VmUsage(msgspec.Struct, kw_only=True):
    name: str
    size: str
    held_s: float
    """Seconds the VM held capacity inside the window (from placement to release)."""
    hours: int
    """Billed hours: clock hours in which the VM held capacity at all (each started hour)."""
    price_per_hour: float
    cost: float


class SizeUsage(msgspec.Struct, kw_only=True):
    size: str
    vms: int
    held_s: float
    hours: int
    price_per_hour: float
    cost: float


class UsageReport(msgspec.Struct, kw_only=True):
    since: datetime
    until: datetime
    vms: list[VmUsage] = []
    sizes: list[SizeUsage] = []
    hours: int = 0
    cost: float = 0.0


class UsageReply(msgspec.Struct, omit_defaults=True):
    usage: UsageReport | None = None
    error: ErrorBody | None = None
