"""Address management of one network: the lowest free address, whatever was taken and given
back before, without scanning."""

from __future__ import annotations

import ipaddress

from hypothesis import given, strategies as st

from scheduler.state.ipam import Ipam, ip_int, ip_text

NET = ipaddress.IPv4Network("10.9.0.0/27")
USABLE = [int(a) for a in NET.hosts()][1:]  # the first is the gateway


def test_the_network_gateway_and_broadcast_are_never_a_vm_s() -> None:
    ipam = Ipam(str(NET))
    assert (ip_text(ipam.gateway), ipam.total) == ("10.9.0.1", 29)
    assert ipam.problem(ip_int("10.9.0.0")) == "is the network's own address"
    assert ipam.problem(ip_int("10.9.0.1")) == "is the gateway (the hosts' bridge holds it)"
    assert ipam.problem(ip_int("10.9.0.31")) == "is the broadcast address"
    assert ipam.problem(ip_int("10.9.0.32")) == "is outside the network"
    assert ipam.problem(ip_int("10.9.0.30")) is None


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(USABLE)), max_size=80))
def test_the_next_free_address_is_always_the_lowest_free_one(
    steps: list[tuple[bool, int]],
) -> None:
    ipam = Ipam(str(NET))
    held: set[int] = set()
    for take, address in steps:
        if take:
            nxt = ipam.next_free()
            assert nxt == min((a for a in USABLE if a not in held), default=None)
            if nxt is not None:  # the core takes what it was given, or one asked for by name
                chosen = nxt if address % 2 else address
                if chosen not in held:
                    ipam.take(chosen)
                    held.add(chosen)
        elif address in held:
            ipam.release(address)
            held.discard(address)
        assert ipam.used == len(held)
    assert ipam.next_free() == min((a for a in USABLE if a not in held), default=None)


def test_a_full_slash_16_finds_a_released_address_at_once() -> None:
    ipam = Ipam("10.8.0.0/16")
    for _ in range(60_000):
        address = ipam.next_free()
        assert address is not None
        ipam.take(address)
    middle = ip_int("10.8.100.7")
    ipam.release(middle)
    assert ipam.next_free() == middle
    ipam.take(middle)
    assert ipam.next_free() == ipam.first + 60_000


@given(st.tuples(*[st.integers(0, 300)] * 4), st.sampled_from(["", "0", " ", "+", "\u0663"]))
def test_addresses_parse_as_ipaddress_parses_them(octets: tuple[int, ...], noise: str) -> None:
    for text in (".".join(map(str, octets)), ".".join(map(str, octets)) + noise, noise + "1.2.3.4"):
        try:
            expected: int | None = int(ipaddress.IPv4Address(text))
        except ValueError:
            expected = None
        try:
            found: int | None = ip_int(text)
        except ValueError:
            found = None
        assert found == expected, text
