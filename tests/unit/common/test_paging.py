"""Paging a list: whatever the names, the filter and the limit, the pages a client fetches one
after another hold every item that passes the filter exactly once, in name order, and each
page fits in the largest message."""

from __future__ import annotations

import msgspec
from hypothesis import given, strategies as st

from common.paging import Oversized, after_marker, page_reply

Item = tuple[str, str, bool]
"""(name, payload, passes the filter)"""


def fetch_all(items: list[Item], limit: int | None, max_bytes: int) -> list[list[str]]:
    """What a client sees, page by page, asking again with each reply's ``next``."""
    ordered = sorted(items)
    names = [name for name, _, _ in ordered]
    pages: list[list[str]] = []
    marker: str | None = None
    while True:
        start = after_marker(names, marker)
        passing = (
            (name, msgspec.json.encode({"name": name, "pad": pad}))
            for name, pad, keep in ordered[start:]
            if keep
        )
        reply = page_reply("things", passing, limit=limit, max_bytes=max_bytes)
        assert not isinstance(reply, Oversized)
        assert len(reply) <= max_bytes
        decoded = msgspec.json.decode(reply)
        assert set(decoded) <= {"things", "next"}
        page = [thing["name"] for thing in decoded["things"]]
        assert limit is None or len(page) <= limit
        pages.append(page)
        if "next" not in decoded:
            return pages
        assert page and decoded["next"] == page[-1]  # a page before the last is never empty
        marker = decoded["next"]


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
items = st.dictionaries(names, st.tuples(st.text(max_size=40), st.booleans()), max_size=40)


@given(
    items=items,
    limit=st.none() | st.integers(min_value=1, max_value=50),
    room=st.integers(min_value=0, max_value=2000),
)
def test_pages_hold_every_passing_item_once_in_order_and_each_fits(
    items: dict[str, tuple[str, bool]], limit: int | None, room: int
) -> None:
    listed = [(name, pad, keep) for name, (pad, keep) in items.items()]
    # Room for the largest item, its ``next`` and the envelope, then whatever hypothesis adds.
    largest = max(
        (len(msgspec.json.encode({"name": n, "pad": p})) for n, p, _ in listed), default=0
    )
    max_bytes = 2 * largest + 100 + room
    pages = fetch_all(listed, limit, max_bytes)
    seen = [name for page in pages for name in page]
    assert seen == sorted(name for name, _, keep in listed if keep)
    if limit is None and sum(len(page) for page in pages) == 0:
        assert pages == [[]]  # nothing passes: one empty page, and no next


def test_without_a_limit_everything_that_fits_is_one_page() -> None:
    listed = [(f"vm-{i:02}", "x" * 10, True) for i in range(30)]
    assert fetch_all(listed, None, 1024 * 1024) == [[name for name, _, _ in listed]]


def test_a_limit_cuts_pages_and_the_last_has_no_next() -> None:
    listed = [(f"vm-{i}", "", True) for i in range(5)]
    assert fetch_all(listed, 2, 1024 * 1024) == [["vm-0", "vm-1"], ["vm-2", "vm-3"], ["vm-4"]]


def test_an_item_larger_than_a_message_is_named_not_dropped() -> None:
    items = [("big", b'"' + b"x" * 200 + b'"')]
    assert page_reply("things", items, limit=None, max_bytes=100) == Oversized("big")


def test_a_marker_that_names_no_item_starts_after_where_it_would_be() -> None:
    assert after_marker(["a", "c", "e"], "b") == 1
    assert after_marker(["a", "c", "e"], "c") == 2
    assert after_marker(["a", "c", "e"], None) == 0
    assert after_marker(["a", "c", "e"], "z") == 3
