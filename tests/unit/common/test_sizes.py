"""Sizes as people type them: one disk-size syntax for every verb, size names in any case."""

from __future__ import annotations

import pytest

from common.sizes import find_size, parse_size_mib


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("1G", 1024),
        ("1g", 1024),
        ("512M", 512),
        ("1024M", 1024),
        ("1024", 1024),
        ("1.5G", 1536),
        ("2GiB", 2048),
        ("1T", 1024 * 1024),
        (" 64 MiB ", 64),
    ],
)
def test_disk_sizes_in_one_syntax(text: str, mib: int) -> None:
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "like 1G, 512M or 1024"),
        ("big", "like 1G, 512M or 1024"),
        ("1B", "like 1G, 512M or 1024"),
        ("1K", "like 1G, 512M or 1024"),
        ("0", "at least 1 MiB"),
        ("0.5M", "whole number of MiB"),
        ("-1G", "like 1G, 512M or 1024"),
    ],
)
def test_bad_disk_sizes_say_what_is_expected(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_size_mib(text)


SIZES = {"Small": "s", "Medium": "m", "A6": "a6"}


@pytest.mark.parametrize(
    ("typed", "found"),
    [("Small", "s"), ("small", "s"), ("SMALL", "s"), ("a6", "a6"), ("Large", None), ("", None)],
)
def test_size_names_are_found_in_any_case(typed: str, found: str | None) -> None:
    assert find_size(SIZES, typed) == found
