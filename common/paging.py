"""Paged lists: every list request may carry a ``limit`` and a ``marker``, and a list reply
carries ``next`` when more items remain (OpenStack's ``limit`` + ``marker``).

Items are listed in a fixed order (by name, except the sizes, which keep the catalogue's order);
a page holds the items after ``marker`` that pass the request's filters, at most ``limit`` of
them and never more than fit in one message: a list larger than the largest message is cut
into pages, never dropped. A page may thus hold fewer than ``limit`` items; only a reply
without ``next`` is the last. A request without ``limit`` gets as many items as fit, so a
client that does not know paging gets the whole list whenever it fits in one message, and
the first page (with ``next``, which it ignores) when it does not.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

MAX_PAGE_LIMIT: Final = 1000
"""The largest ``limit`` a list request may ask for."""
DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024
"""nats-server's default ``max_payload``: the page size when the connection does not say."""

PageLimit = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        le=MAX_PAGE_LIMIT,
        description="At most this many items in the page (fewer if they would not fit in one "
        "message); none: as many as fit.",
    ),
]
Marker = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        description="List the items after this one: the `next` of the previous page.",
    ),
]
NextMarker = Annotated[
    str,
    msgspec.Meta(description="More items remain: ask again with this as the `marker`."),
]


class PageQuery(msgspec.Struct, kw_only=True):
    """The paging fields every list request has."""

    limit: PageLimit | None = None
    marker: Marker | None = None


@dataclass(frozen=True, slots=True)
class Oversized:
    """One item alone is larger than a message may be: no page can hold it."""

    name: str


_encoder: Final = msgspec.json.Encoder()
_NEXT_FIELD: Final = b',"next":'


def page_reply(
    key: str, items: Iterable[tuple[str, bytes]], *, limit: int | None, max_bytes: int
) -> bytes | Oversized:
    """The reply ``{key: [...], "next": ...}`` of one page, at most ``max_bytes`` long.

    ``items`` are (name, JSON of the item), already after the marker and filtered, in list
    order; they are consumed only as far as the page needs, plus one to know whether more
    remain. Room for ``next`` is kept for every item taken, so the reply fits whichever
    item ends the page.
    """
    head = b'{"' + key.encode() + b'":['
    room = max_bytes - len(head) - len(b"]}") - len(_NEXT_FIELD) - len(b'""')
    parts: list[bytes] = []
    last: str | None = None
    for name, part in items:
        room -= len(part) + 1  # the item and the comma before it (one to spare for the first)
        # A name takes at most 6 bytes a character in JSON (\u0000), quotes aside.
        if len(parts) == limit or room < 6 * len(name):
            if last is None:
                return Oversized(name)
            return head + b",".join(parts) + b"]" + _NEXT_FIELD + _encoder.encode(last) + b"}"
        parts.append(part)
        last = name
    return head + b",".join(parts) + b"]}"


def after_marker(names: Sequence[str], marker: str | None) -> int:
    """Where the page starts in ``names`` (sorted): the first name after ``marker``, which
    need not name an item (it may have been deleted since the previous page)."""
    return 0 if marker is None else bisect.bisect_right(names, marker)
