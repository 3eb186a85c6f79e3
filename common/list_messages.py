"""The list requests and replies of VMs, hosts and sizes (images and networks have theirs in
their own modules); every list is paged as common/paging.py says."""

from __future__ import annotations

import msgspec

from common.fields import ErrorBody, HostIdField, ShortText
from common.messages import HostInfo, Size, VmInfo, VmState
from common.paging import NextMarker, PageQuery


class ListVms(PageQuery, kw_only=True):
    """Filters apply before paging: a page holds only VMs that pass them."""

    state: VmState | None = None
    host: HostIdField | None = None
    region: ShortText | None = None


class ListHosts(PageQuery, kw_only=True):
    pass


class ListSizes(PageQuery, kw_only=True):
    """Sizes keep the catalogue's order; a ``marker`` must name one of them."""


class VmListReply(msgspec.Struct, omit_defaults=True):
    vms: list[VmInfo] = []
    next: NextMarker | None = None
    error: ErrorBody | None = None


class HostListReply(msgspec.Struct, omit_defaults=True):
    hosts: list[HostInfo] = []
    next: NextMarker | None = None
    error: ErrorBody | None = None


class SizeListReply(msgspec.Struct, omit_defaults=True):
    sizes: list[Size] = []
    next: NextMarker | None = None
    error: ErrorBody | None = None
