"""Network namespaces for partition faults: one per agent, joined to the root namespace by veth.

Every name carries a per-run prefix ``stxc<pid in hex>``, so the leftovers of a crashed run (its
process is gone) are found and removed at the start of the next one. Addresses are private /30
pairs in 10.213.0.0/16 picked from the run's pid; the test talks only to addresses it created.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

PREFIX = "stxc"
_NAME_RE = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})")
_BASE = ipaddress.IPv4Address("10.213.0.0")
_PAIRS_PER_RUN = 8
"""Each run gets a /27: 8 /30 pairs (the hub and up to 7 agents)."""
_SEGMENT_PAIRS = 2
"""A shared underlay segment takes the block's last two pair slots: a /29 (up to 6 hosts)."""


class NetnsUnavailable(Exception):
    """This machine (or user) cannot create network namespaces."""


def run_ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    return result.stdout


def unavailable_reason() -> str | None:
    """Why partitions cannot be injected here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} not found: apt-get install -y iproute2 iptables"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(name: str) -> bool:
    match = _NAME_RE.match(name)
    return match is not None and not _pid_alive(int(match[1], 16))


def clean_leftovers() -> list[str]:
    """Remove the namespaces and links of runs whose process is gone; their names."""
    removed = []
    for line in run_ip("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        if _stale(name):
            run_ip("ip", "netns", "del", name, check=False)
            removed.append(name)
    for line in run_ip("ip", "-o", "link", "show").splitlines():
        parts = line.split(":")
        link = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        if _stale(link):
            run_ip("ip", "link", "del", link, check=False)
            removed.append(link)
    return removed


def ours() -> list[str]:
    """Namespaces and links of this process's runs still present (none once a run closed)."""
    prefix = f"{PREFIX}{os.getpid():06x}"[:10]
    names = [line.split()[0] for line in run_ip("ip", "netns", "list").splitlines() if line]
    names += [part.split(":")[1].strip() for part in run_ip("ip", "-o", "link").splitlines()]
    return [name for name in names if name.startswith(prefix)]


@dataclass
class Pair:
    """A veth pair: ``root_dev`` (root namespace, ``root_addr``) and ``inner_dev`` in ``netns``
    (``inner_addr``), or both ends in the root namespace for the hub."""

    index: int
    root_dev: str
    inner_dev: str
    root_addr: str
    inner_addr: str
    netns: str | None


@dataclass
class Network:
    """The run's namespaces: a hub address the nats-server listens on, and one namespace per
    agent. ``close()`` removes everything it made, also after a failure half-way."""

    prefix: str = field(default_factory=lambda: f"{PREFIX}{os.getpid():06x}"[:10])
    pairs: list[Pair] = field(default_factory=list)
    slots: int = _PAIRS_PER_RUN
    """Pair slots left for veth pairs (a shared segment takes the last ones)."""

    def _block(self) -> ipaddress.IPv4Address:
        return _BASE + (os.getpid() % 2048) * _PAIRS_PER_RUN * 4

    def _pair(self, index: int, netns: str | None) -> Pair:
        base = self._block() + index * 4
        pair = Pair(
            index,
            f"{self.prefix}r{index}",
            f"{self.prefix}n{index}",
            str(base + 1),
            str(base + 2),
            netns,
        )
        self.pairs.append(pair)
        run_ip("ip", "link", "add", pair.root_dev, "type", "veth", "peer", "name", pair.inner_dev)
        if netns is not None:
            run_ip("ip", "link", "set", pair.inner_dev, "netns", netns)
        run_ip("ip", "addr", "add", f"{pair.root_addr}/30", "dev", pair.root_dev)
        run_ip("ip", "link", "set", pair.root_dev, "up")
        run_ip("ip", "addr", "add", f"{pair.inner_addr}/30", "dev", pair.inner_dev, netns=netns)
        run_ip("ip", "link", "set", pair.inner_dev, "up", netns=netns)
        return pair

    def hub(self) -> str:
        """The address servers listen on (the root end of a veth pair kept in the root ns)."""
        return self._pair(0, None).root_addr

    def add_namespace(self, label: str) -> str:
        """A namespace for one agent that reaches the hub through its own veth pair."""
        if len(self.pairs) >= self.slots:
            raise RuntimeError("too many namespaces for one run")
        netns = f"{self.prefix}-{label}"
        run_ip("ip", "netns", "add", netns)
        pair = self._pair(len(self.pairs), netns)
        run_ip("ip", "link", "set", "lo", "up", netns=netns)
        run_ip("ip", "route", "add", "default", "via", pair.root_addr, netns=netns)
        return netns

    def join(self, netns_a: str, netns_b: str) -> tuple[str, str]:
        """Join two namespaces by a veth pair of their own (an underlay between two "hosts");
        the address of the end in ``netns_a`` and of the end in ``netns_b``."""
        if len(self.pairs) >= self.slots:
            raise RuntimeError("too many veth pairs for one run")
        index = len(self.pairs)
        base = self._block() + index * 4
        pair = Pair(
            index, f"{self.prefix}r{index}", f"{self.prefix}n{index}", str(base + 1),
            str(base + 2), netns_b,
        )  # fmt: skip
        self.pairs.append(pair)
        run_ip(
            "ip", "link", "add", pair.root_dev, "netns", netns_a, "type", "veth",
            "peer", "name", pair.inner_dev, "netns", netns_b,
        )  # fmt: skip
        for dev, addr, netns in ((pair.root_dev, pair.root_addr, netns_a),
                                 (pair.inner_dev, pair.inner_addr, netns_b)):  # fmt: skip
            run_ip("ip", "addr", "add", f"{addr}/30", "dev", dev, netns=netns)
            run_ip("ip", "link", "set", dev, "up", netns=netns)
        return pair.root_addr, pair.inner_addr

    def underlay(self, netnses: list[str]) -> list[str]:
        """Join the namespaces by links of their own, as separate machines' underlay: a veth
        pair for two (``join``), a segment for more (``segment``), none for one; each one's
        address there, in the order given."""
        if len(netnses) == 2:
            return list(self.join(netnses[0], netnses[1]))
        return self.segment(netnses) if len(netnses) > 2 else []

    def segment(self, netnses: list[str]) -> list[str]:
        """Join namespaces on one underlay segment (a bridge in a namespace of its own, so the
        root namespace forwards nothing); each one's address there, in the order given."""
        first = _PAIRS_PER_RUN - _SEGMENT_PAIRS
        if len(self.pairs) > first or len(netnses) > _SEGMENT_PAIRS * 4 - 2:
            raise RuntimeError("no room for an underlay segment in this run")
        self.slots = first
        hub = f"{self.prefix}-seg"
        self.pairs.append(Pair(first, "", "", "", "", hub))  # close() deletes its namespace
        run_ip("ip", "netns", "add", hub)
        run_ip("ip", "link", "add", "br0", "type", "bridge", netns=hub)
        run_ip("ip", "link", "set", "br0", "up", netns=hub)
        base = self._block() + first * 4
        addresses = []
        for index, netns in enumerate(netnses, start=1):
            port, dev, address = f"p{index}", "seg0", str(base + index)
            run_ip(
                "ip", "link", "add", port, "netns", hub, "type", "veth",
                "peer", "name", dev, "netns", netns,
            )  # fmt: skip
            run_ip("ip", "link", "set", port, "master", "br0", netns=hub)
            run_ip("ip", "link", "set", port, "up", netns=hub)
            run_ip("ip", "addr", "add", f"{address}/29", "dev", dev, netns=netns)
            run_ip("ip", "link", "set", dev, "up", netns=netns)
            addresses.append(address)
        return addresses

    def block(self, netns: str, peer: str, *, outbound: bool, inbound: bool) -> None:
        """Drop the namespace's packets to (``outbound``) and/or from (``inbound``) ``peer``."""
        if outbound:
            run_ip("iptables", "-A", "OUTPUT", "-d", peer, "-j", "DROP", netns=netns)
        if inbound:
            run_ip("iptables", "-A", "INPUT", "-s", peer, "-j", "DROP", netns=netns)

    def heal(self, netns: str) -> None:
        run_ip("iptables", "-F", "OUTPUT", netns=netns)
        run_ip("iptables", "-F", "INPUT", netns=netns)

    def close(self) -> None:
        """Delete every namespace and link of this run (processes inside must be gone)."""
        for pair in reversed(self.pairs):
            if pair.netns is not None:
                run_ip("ip", "netns", "del", pair.netns, check=False)
            if pair.root_dev:
                run_ip("ip", "link", "del", pair.root_dev, check=False)
        self.pairs.clear()
