"""Digests that are sums: a set's digest is the sum, modulo 2**64, of a 64-bit hash of each of
its items. A sum does not depend on order, and an item added or removed moves it by that item's
hash alone, so both sides of a change (common/netconfig.py, common/replicaset.py) keep it as
items come and go instead of hashing the whole again. Pure."""

from __future__ import annotations

import hashlib

MASK = (1 << 64) - 1


def hash64(body: bytes) -> int:
    """One item's hash."""
    return int.from_bytes(hashlib.blake2b(body, digest_size=8).digest(), "little")


def digest_text(total: int) -> str:
    """The digest of a set whose item hashes sum to ``total``: "" for the empty sum."""
    total &= MASK
    return f"{total:016x}" if total else ""
