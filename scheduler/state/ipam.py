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
from socket import AF_INET, inet_ntoa, inet_pton

MIN_PREFIX = 16
"""The largest network: a /16 (65,533 addresses for VMs). One layer-2 segment flooded by
head-end replication to every host carrying it does not grow well past that; larger address
spaces belong in several networks."""
MAX_PREFIX = 29
"""The smallest network: a /29 (5 addresses for VMs); a /30 would hold one VM."""


def ip_int(text: str) -> int:
    """Dotted IPv4 as an int (``ValueError`` if it is not one, as ``ipaddress`` says: four
    decimal octets, no leading zeros, nothing around them). ``inet_pton`` accepts exactly
    that; it runs for every NIC record indexed, and costs 0.2 us where ``ipaddress`` took 2."""
    try:
        return int.from_bytes(inet_pton(AF_INET, text), "big")
    except OSError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def ip_text(value: int) -> str:
    return inet_ntoa(value.to_bytes(4, "big"))


class Ipam:
    __slots__ = (
        "_cursor",
        "_free",
        "_queued",
        "first",
        "gateway",
        "gateway_text",
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
        self.gateway_text = ip_text(self.gateway)
        """The gateway's address as every NIC record in the network holds it."""
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
        held = self.held
        held[address] = held.get(address, 0) + 1

    def release(self, address: int) -> None:
        held = self.held
        count = held.get(address, 0) - 1
        if count > 0:
            held[address] = count
            return
        del held[address]
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
