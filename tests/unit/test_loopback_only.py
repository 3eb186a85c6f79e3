"""Tests and benchmarks talk only to loopback or to the network namespaces they create.

A scan of every address literal in tests/, rigs/, bench/ and scripts/: each must be on loopback,
or in the range the chaos rig's namespaces are built from (rigs/chaos/netns.py), or in the range
of the guest networks the network tests build on bridges inside their namespaces
(tests/netkit.py), or be data that is never dialled: the ranges of the tests' virtual networks
(guests' addresses, which the fake driver and the simulated network backend only account for),
the documentation ranges (RFC 5737: never routed), the unspecified address (``0.0.0.0/0``:
anyone, in an endpoint's allow list), or be listed below. A new address anywhere else fails here
first.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("tests", "rigs", "bench", "scripts")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
NETNS_RANGE = ipaddress.ip_network("10.213.0.0/16")  # rigs/chaos/netns.py _BASE
GUEST_RANGE = ipaddress.ip_network("10.214.0.0/16")  # tests/netkit.py: bridges in namespaces
DATA_RANGES = (
    ipaddress.ip_network("10.0.0.0/12"),  # the tests' and benchmarks' virtual networks
    ipaddress.ip_network("192.0.2.0/24"),  # RFC 5737 documentation ranges: hosts' underlay
    ipaddress.ip_network("198.51.100.0/24"),  # addresses and endpoints' allow ranges in
    ipaddress.ip_network("203.0.113.0/24"),  # unit tests
    ipaddress.ip_network("0.0.0.0/32"),
)
NEVER_DIALLED = {
    # A netmask in the text of a dnsmasq configuration.
    ("tests/unit/hostagent/test_netrender.py", "255.255.255.0"),
    # redact_url() is a pure string function; the address is only its input.
    ("tests/integration/test_nats_auth.py", "10.0.0.1"),
    # The shipped cluster config's listen lines, replaced by loopback ones before it runs.
    ("tests/integration/test_deploy.py", "0.0.0.0"),
    # A network range the scheduler must refuse (multicast), and a text to parse.
    ("tests/unit/scheduler/test_networks.py", "224.0.0.0"),
    ("tests/unit/scheduler/test_ipam.py", "1.2.3.4"),
}
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()
_IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")


def _literals() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in {".py", ".sh", ".toml"} or ".venv" in path.parts:
                continue
            rel = path.relative_to(ROOT).as_posix()
            if rel == THIS_FILE:
                continue
            for text in _IPV4.findall(path.read_text(encoding="utf-8")):
                found.append((rel, text))
    return found


def _allowed(rel: str, text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return True  # a version number such as 1.2.3.4 in a comment, not an address
    if address in LOOPBACK or address in NETNS_RANGE or address in GUEST_RANGE:
        return True
    if any(address in data for data in DATA_RANGES):
        return True
    return (rel, text) in NEVER_DIALLED


def test_every_address_in_tests_and_benchmarks_is_loopback_or_our_own_namespaces() -> None:
    literals = _literals()
    assert any(ipaddress.ip_address(t) in LOOPBACK for _, t in literals)  # the scan sees files
    offenders = sorted({(rel, t) for rel, t in literals if not _allowed(rel, t)})
    assert offenders == []


def test_the_ray_peer_is_pinned_to_loopback() -> None:
    # Ray binds its servers to the machine's own interface unless told otherwise.
    source = (ROOT / "bench/peers/ray_failover.py").read_text(encoding="utf-8")
    assert re.search(r"add_node\([^)]*node_ip_address=LOOPBACK", source)
    assert '"node_ip_address": LOOPBACK' in source
    assert "_node_ip_address=LOOPBACK" in source
    assert 'os.environ["RAY_USAGE_STATS_ENABLED"] = "0"' in source  # no reports home
