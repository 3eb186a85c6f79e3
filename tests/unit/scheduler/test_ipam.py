"""Address management of one network: the lowest free address, whatever was taken and given
back before, without scanning."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from scheduler.state.ipam import Ipam, ip_int, ip_text

NET = ipaddress.IPv4Network("10.9.0.0/27")
USABLE = [int(a) for a in NET.hosts()][1:]  # the first is the gateway
SMALL = ipaddress.IPv4Network("10.9.1.0/29")
SMALL_USABLE = [int(a) for a in SMALL.hosts()][1:]  # five: a history fills it often


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


@given(st.integers(0, 2**32 - 1))
def test_addresses_print_as_ipaddress_prints_them(value: int) -> None:
    assert ip_text(value) == str(ipaddress.IPv4Address(value))
    assert ip_int(ip_text(value)) == value


class IpamAgainstAModel(RuleBasedStateMachine):
    """An ``Ipam`` driven as the core drives it (the lowest free address taken at create, one
    asked for by name, released at delete, a moment where two records hold one address)
    answers as a plain count of held addresses does; and one built again from the held
    addresses (a restart) gives the same next address."""

    def __init__(self) -> None:
        super().__init__()
        self.ipam = Ipam(str(SMALL))
        self.held: dict[int, int] = {}

    def lowest_free(self) -> int | None:
        return min((a for a in SMALL_USABLE if a not in self.held), default=None)

    def hold(self, address: int) -> None:
        self.ipam.take(address)
        self.held[address] = self.held.get(address, 0) + 1

    @rule()
    def create(self) -> None:
        address = self.ipam.next_free()
        assert address == self.lowest_free()
        if address is not None:  # None: the network is full, the VM waits (no_address)
            self.hold(address)

    @rule(address=st.sampled_from(SMALL_USABLE))
    def create_asking_for(self, address: int) -> None:
        assert self.ipam.problem(address) is None
        if self.ipam.is_free(address):  # the core refuses a held one (address_in_use)
            assert address not in self.held
            self.hold(address)

    @rule(address=st.sampled_from(SMALL_USABLE))
    def held_twice_for_a_moment(self, address: int) -> None:
        """A read copy applies one step's records in any order: a delete and a create of the
        same address may overlap there."""
        if address in self.held:
            self.hold(address)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        if not self.held:
            return
        address = data.draw(st.sampled_from(sorted(self.held)))
        self.ipam.release(address)
        self.held[address] -= 1
        if not self.held[address]:
            del self.held[address]

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.ipam.used == len(self.held)
        assert sorted(self.ipam.doubly_held()) == sorted(a for a, n in self.held.items() if n > 1)
        assert all(self.ipam.is_free(a) == (a not in self.held) for a in SMALL_USABLE)
        assert self.ipam.next_free() == self.lowest_free()

    @invariant()
    def a_restart_gives_the_same_next_address(self) -> None:
        again = Ipam(str(SMALL))
        for address, count in self.held.items():
            for _ in range(count):
                again.take(address)
        assert again.next_free() == self.ipam.next_free()


IpamAgainstAModel.TestCase.settings = settings(max_examples=200, stateful_step_count=60)
test_ipam_against_a_model = IpamAgainstAModel.TestCase
