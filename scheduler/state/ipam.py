"""Address management of one virtual network: which addresses are held, and the lowest free one.
Pure.

A network ``a.b.c.d/n`` keeps its network address, its first address (the gateway, held by the
bridge on every host) and its broadcast address; VMs get the others. ``next_free`` finds the
lowest free address in O(log n) (amortized): addresses below ``_cursor`` that were released wait
in a heap, and ``_cursor`` moves up through addresses never handed out (skipping any taken by
name). So a /16 holding 60,000 VMs never scans, and the same records always give the same next
address, before and after a restart.

A count per address (not a set) lets a read copy of the records go through a moment where two
records claim one address (one step's records are applied in any order); the core itself never
lets that happen, and ``doubly_held`` says so in its invariant check.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import Counter

MIN_PREFIX = 16
"""The largest network: a /16 (65,533 addresses for VMs). One layer-2 segment flooded by
head-end replication to every host carrying it does not grow well past that; larger address
spaces belong in several networks."""
MAX_PREFIX = 29
"""The smallest network: a /29 (5 addresses for VMs); a /30 would hold one VM."""


def ip_int(text: str) -> int:
    """Dotted IPv4 as an int (``ValueError`` if it is not one, as ``ipaddress`` says: four
    decimal octets, no leading zeros). Parsed by hand: it runs for every NIC record indexed,
    and ``ipaddress`` took 2 us of a placement decision's 40."""
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(f"{text!r} is not an IPv4 address")
    value = 0
    for part in parts:
        if not part.isdigit() or not part.isascii() or len(part) > 3 or part[0] == "0" != part:
            raise ValueError(f"{text!r} is not an IPv4 address")
        octet = int(part)
        if octet > 255:
            raise ValueError(f"{text!r} is not an IPv4 address")
        value = value << 8 | octet
    return value


def ip_text(value: int) -> str:
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


class Ipam:
    __slots__ = (
        "_cursor",
        "_free",
        "_queued",
        "first",
        "gateway",
        "held",
        "last",
        "network",
        "prefix",
    )

    def __init__(self, cidr: str) -> None:
        """``cidr`` is a valid network (checked by the networks room before it gets here)."""
        net = ipaddress.IPv4Network(cidr)
        self.network = int(net.network_address)
        self.prefix = net.prefixlen
        self.gateway = self.network + 1
        self.first = self.network + 2
        self.last = int(net.broadcast_address) - 1
        self._cursor = self.first
        """Every address below it was handed out at some time."""
        self._free: list[int] = []
        """Released addresses below the cursor (a heap; may hold some taken again since)."""
        self._queued: set[int] = set()
        self.held: Counter[int] = Counter()

    @property
    def total(self) -> int:
        """Addresses VMs can have."""
        return self.last - self.first + 1

    @property
    def used(self) -> int:
        return len(self.held)

    def problem(self, address: int) -> str | None:
        """Why ``address`` cannot be a VM's in this network (None if it can be)."""
        if not self.network <= address <= self.last + 1:
            return "is outside the network"
        if address == self.network:
            return "is the network's own address"
        if address == self.gateway:
            return "is the gateway (the hosts' bridge holds it)"
        if address == self.last + 1:
            return "is the broadcast address"
        return None

    def is_free(self, address: int) -> bool:
        return address not in self.held

    def take(self, address: int) -> None:
        self.held[address] += 1

    def release(self, address: int) -> None:
        count = self.held[address] - 1
        if count > 0:
            self.held[address] = count
            return
        del self.held[address]
        if address < self._cursor and address not in self._queued:
            self._queued.add(address)
            heapq.heappush(self._free, address)

    def next_free(self) -> int | None:
        """The lowest free address (None when the network is full). It is not taken here: a
        VM record that holds it takes it, through the index."""
        while self._free:
            address = self._free[0]
            if address not in self.held:
                return address
            heapq.heappop(self._free)
            self._queued.discard(address)
        while self._cursor <= self.last and self._cursor in self.held:
            self._cursor += 1
        return self._cursor if self._cursor <= self.last else None

    def doubly_held(self) -> list[int]:
        return [address for address, count in self.held.items() if count > 1]
