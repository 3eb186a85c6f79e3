"""What the scheduler wants each host's networks to be, as last computed and sent. Pure data
(kept in ``Carry``; scheduler/core/hostnets.py keeps it up to date)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from common.ids import HostId
from common.netconfig import NetConfig, peer_hash, peers_hash
from common.sumdigest import digest_text

RECENT_DIGESTS = 64
"""How many digests sent by updates a host is remembered to be on the way through."""


@dataclass(slots=True)
class PeerSet:
    """The underlay addresses of the up hosts carrying a network, as last given to its hosts
    (recomputed at a tick when its hosts changed), and the sum of their peer hashes."""

    addresses: frozenset[str]
    total: int
    ordered: list[str] = field(default_factory=list)
    """``addresses`` sorted (never changed: a host's list is cut from it)."""

    @classmethod
    def of(cls, vnet: str, addresses: frozenset[str]) -> PeerSet:
        return cls(addresses, peers_hash(vnet, addresses), sorted(addresses))

    def for_host(self, own: str) -> list[str]:
        """The peers of a host at ``own``, sorted: the others' addresses."""
        ordered = self.ordered
        if own not in self.addresses:
            return list(ordered)
        at = bisect.bisect_left(ordered, own)
        return ordered[:at] + ordered[at + 1 :]

    def total_for(self, vnet: str, own: str) -> int:
        """The peer hashes of a host at ``own`` (its own address is not its peer)."""
        return self.total - peer_hash(vnet, own) if own in self.addresses else self.total


@dataclass(slots=True)
class HostWant:
    """A host's desired configuration as last sent: its networks, leases and endpoints (the
    peers are its networks' ``PeerSet`` less ``own``), and its digest."""

    config: NetConfig
    own: str
    """The host's underlay address when this was computed."""
    digest: str = ""
    recent: dict[str, None] = field(default_factory=dict)
    """Digests that updates sent since the last whole configuration lead through: a host
    reporting one is on its way to ``digest``."""

    def reckon(self, peers: dict[str, PeerSet]) -> str:
        """Compute ``digest`` again (after the configuration or a peer set changed)."""
        total = self.config.total
        for vnet in self.config.heads:
            known = peers.get(vnet)  # always there: a network is given its peers when added
            total += known.total_for(vnet, self.own) if known is not None else 0
        self.digest = digest_text(total)
        return self.digest

    def reached(self, digest: str) -> bool:
        """The host reports ``digest``: True if an update led there (the digests before it are
        forgotten: a host that reports one of them later went back, e.g. restarted)."""
        if digest not in self.recent:
            return False
        while next(iter(self.recent)) != digest:
            del self.recent[next(iter(self.recent))]
        return True

    def passed(self, digest: str) -> None:
        self.recent[digest] = None
        if len(self.recent) > RECENT_DIGESTS:
            del self.recent[next(iter(self.recent))]


@dataclass(slots=True)
class NetWants:
    hosts: dict[HostId, HostWant] = field(default_factory=dict)
    """Hosts missing here have theirs computed in full when next needed."""
    peers: dict[str, PeerSet] = field(default_factory=dict)
