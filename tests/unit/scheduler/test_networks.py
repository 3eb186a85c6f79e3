"""The networks room: networks, NIC addresses and MACs, endpoints. Typed errors change nothing."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from common.fields import ErrorCode
from common.messages import CreateVm, VmRef, VmState
from common.network_messages import AddEndpoint, EndpointProtocol, NicRequest, RemoveEndpoint
from scheduler.core.contract import Emit, Op
from scheduler.core.networks import MAX_MAC_SERIAL, mac_of
from tests.unit.scheduler.corekit import CoreKit, vm_events


def kit_with(*hosts: str, **config: object) -> CoreKit:
    kit = CoreKit(**config)
    for i, host in enumerate(hosts):
        kit.heartbeat(host, fault_domain=f"fd-{i}", underlay_ip=f"192.0.2.{i + 1}")
    return kit


def on(vnet: str, ip: str | None = None) -> list[NicRequest]:
    return [NicRequest(vnet=vnet, ip=ip)]


def ips(kit: CoreKit, *names: str) -> list[str]:
    return [kit.vm(name).nics[0].ip for name in names]


def unchanged(kit: CoreKit) -> tuple[object, ...]:
    """What a refused request must leave as it was."""
    state = kit.state
    return (
        {name: (v.cidr, v.deleted, v.vni) for name, v in state.vnets.items()},
        {name: (r.state, list(r.nics), list(r.endpoints)) for name, r in state.vms.items()},
        (state.counters.vni, state.counters.mac_serial),
    )


# --------------------------------------------------------------------------- networks


def test_a_network_gets_a_vni_from_4096_and_its_first_address_as_gateway() -> None:
    kit = kit_with("h1")
    first = kit.vnet("front", "10.1.0.0/24").vnet
    second = kit.vnet("back", "10.2.0.0/16").vnet
    assert first is not None and second is not None
    assert (first.vni, first.gateway, first.addresses_total, first.addresses_used) == (
        4096,
        "10.1.0.1",
        253,
        0,
    )
    assert (second.vni, second.addresses_total) == (4097, 65533)


@pytest.mark.parametrize(
    "cidr",
    [
        "10.1.0.5/24",
        "10.0.0.0/15",
        "10.9.0.0/30",
        "10.9.0.0/32",
        "224.0.0.0/24",
        "127.0.0.0/24",
        "not-a-net/24",
        "10.1.0.128/25",
    ],
    ids=[
        "host-bits",
        "larger-than-16",
        "slash-30",
        "slash-32",
        "multicast",
        "loopback",
        "garbage",
        "overlaps-front",
    ],
)
def test_a_bad_range_is_refused_and_changes_nothing(cidr: str) -> None:
    kit = kit_with("h1")
    kit.vnet("front", "10.1.0.0/24")
    before = unchanged(kit)
    reply = kit.vnet("other", cidr)
    assert reply.error is not None and reply.error.code is ErrorCode.INVALID_NETWORK, reply
    assert unchanged(kit) == before
    assert not any(isinstance(a, Emit) for a in kit.actions)


def test_creating_a_network_again_returns_it_and_another_range_under_its_name_conflicts() -> None:
    kit = kit_with("h1")
    kit.vnet("front", "10.1.0.0/24")
    again = kit.vnet("front", "10.1.0.0/24")
    assert again.vnet is not None and again.vnet.vni == 4096
    other = kit.vnet("front", "10.7.0.0/24")
    assert other.error is not None and other.error.code is ErrorCode.CONFLICT
    assert kit.state.counters.vni == 4096


def test_deleting_a_network_with_vms_is_refused_until_they_are_deleted_and_vnis_stay_unique() -> (
    None
):
    kit = kit_with("h1")
    kit.vnet("front", "10.1.0.0/24")
    kit.create("web-1", nics=on("front"))
    kit.mutate(Op.STOP, VmRef(name="web-1"))
    kit.heartbeat("h1", [])  # stopped: it keeps its address, so it still uses the network
    assert kit.vm("web-1").state is VmState.STOPPED
    before = unchanged(kit)
    refused = kit.delete_vnet("front")
    assert refused.error is not None and refused.error.code is ErrorCode.NETWORK_IN_USE
    assert "web-1" in refused.error.detail and unchanged(kit) == before
    kit.mutate(Op.DELETE, VmRef(name="web-1"))
    deleted = kit.delete_vnet("front")
    assert deleted.vnet is not None and kit.state.vnets["front"].deleted
    assert kit.delete_vnet("front").vnet is not None  # deleting twice changes nothing
    assert kit.delete_vnet("never").error is not None
    again = kit.vnet("front", "10.1.0.0/24").vnet
    assert again is not None and again.vni == 4097


# --------------------------------------------------------------------------- NICs


def test_nics_get_the_lowest_free_addresses_and_macs_that_are_never_reused() -> None:
    kit = kit_with("h1")
    kit.vnet("front", "10.1.0.0/24")
    for name in ("a", "b", "c"):
        kit.create(name, nics=on("front"))
    assert ips(kit, "a", "b", "c") == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    assert [kit.vm(n).nics[0].mac for n in "abc"] == [
        "52:54:00:00:00:01",
        "52:54:00:00:00:02",
        "52:54:00:00:00:03",
    ]
    kit.mutate(Op.DELETE, VmRef(name="b"))
    kit.heartbeat("h1", [vm for vm in kit.running_on("h1") if vm.name != "b"])
    assert kit.vm("b").state is VmState.DELETED
    kit.create("d", nics=on("front"))
    assert ips(kit, "d") == ["10.1.0.3"]  # released, and reused
    assert kit.vm("d").nics[0].mac == "52:54:00:00:00:04"
    nic = kit.vm("d").nics[0]
    assert (nic.prefix_len, nic.gateway, nic.vni) == (24, "10.1.0.1", 4096)


def test_an_address_asked_for_is_given() -> None:
    kit = kit_with("h1")
    kit.vnet("front", "10.1.0.0/24")
    reply = kit.create("a", nics=on("front", "10.1.0.10"))
    assert reply.vm is not None and reply.vm.nics[0].ip == "10.1.0.10"
    kit.create("b", nics=on("front"))
    assert ips(kit, "b") == ["10.1.0.2"]


@pytest.mark.parametrize(
    ("nics", "code"),
    [
        (on("front", "10.1.0.10"), ErrorCode.ADDRESS_IN_USE),
        (on("front", "10.2.0.10"), ErrorCode.INVALID_NETWORK),
        (on("front", "10.1.0.0"), ErrorCode.INVALID_NETWORK),
        (on("front", "10.1.0.1"), ErrorCode.INVALID_NETWORK),
        (on("front", "10.1.0.255"), ErrorCode.INVALID_NETWORK),
        (on("front", "10.1.0.300"), ErrorCode.INVALID_NETWORK),
        (on("nowhere"), ErrorCode.NOT_FOUND),
        ([NicRequest(vnet="front"), NicRequest(vnet="front")], ErrorCode.INVALID_NETWORK),
    ],
    ids=[
        "taken",
        "outside",
        "network-address",
        "gateway",
        "broadcast",
        "not-an-address",
        "unknown-network",
        "two-nics-one-network",
    ],
)
def test_a_bad_nic_is_refused_and_changes_nothing(nics: list[NicRequest], code: ErrorCode) -> None:
    kit = kit_with("h1")
    kit.vnet("front", "10.1.0.0/24")
    kit.create("holder", nics=on("front", "10.1.0.10"))
    before = unchanged(kit)
    reply = kit.create("new", nics=nics)
    assert reply.error is not None and reply.error.code is code, reply
    assert unchanged(kit) == before
    assert "new" not in kit.state.vms


def test_a_create_repeated_is_the_same_vm_and_with_another_network_conflicts() -> None:
    kit = kit_with("h1")
    kit.vnet("front", "10.1.0.0/24")
    kit.vnet("back", "10.2.0.0/24")
    kit.create("a", nics=on("front", "10.1.0.9"))
    same = kit.create("a", nics=on("front", "10.1.0.9"))
    assert same.vm is not None and same.vm.nics[0].ip == "10.1.0.9"
    assert kit.create("a", nics=on("front")).vm is not None  # no address asked: the same VM
    other = kit.create("a", nics=on("back"))
    assert other.error is not None and other.error.code is ErrorCode.CONFLICT


def test_the_address_and_mac_stay_across_stop_start_failover_and_drain() -> None:
    kit = kit_with("h1", "h2")
    kit.vnet("front", "10.1.0.0/24")
    kit.create("web-1", nics=on("front"))
    nic = kit.vm("web-1").nics[0]
    first = kit.vm("web-1").host
    assert first is not None
    # stop / start
    kit.mutate(Op.STOP, VmRef(name="web-1"))
    kit.heartbeat(first, [])
    kit.mutate(Op.START, VmRef(name="web-1"))
    assert kit.vm("web-1").nics == [nic]
    # failover: the host goes silent and is declared dead
    host = kit.vm("web-1").host
    assert host is not None
    other = "h2" if host == "h1" else "h1"
    for _ in range(8):
        kit.heartbeat(other, kit.running_on(other), underlay_ip="192.0.2.9")
        kit.advance(1.0)
    assert kit.vm("web-1").host == other and kit.vm("web-1").nics == [nic]
    # drain: back to the first host
    kit.heartbeat(host, [], underlay_ip="192.0.2.8")
    kit.heartbeat(other, kit.running_on(other), underlay_ip="192.0.2.9")
    actions = kit.host_op(Op.DRAIN, other, cold=True)
    actions += kit.heartbeat(other, [], underlay_ip="192.0.2.9")
    actions += kit.advance(0.1)
    assert kit.vm("web-1").host == host and kit.vm("web-1").nics == [nic]
    events = [e for e in vm_events(actions) if e.name == "web-1"]
    assert len(events) >= 3 and all(e.nics[0].ip == nic.ip for e in events)


def test_a_full_network_leaves_the_vm_pending_no_address_until_an_address_is_released() -> None:
    kit = kit_with("h1")
    kit.vnet("tiny", "10.3.0.0/29")  # .2 .. .6: five VMs
    for i in range(5):
        kit.create(f"vm-{i}", "ExtraSmall", nics=on("tiny"))
    reply = kit.create("late", "ExtraSmall", nics=on("tiny"))
    assert reply.vm is not None and reply.vm.state is VmState.PENDING
    assert reply.vm.reason.startswith("no_address") and reply.vm.nics[0].ip == ""
    kit.advance(1.0)
    assert kit.vm("late").state is VmState.PENDING
    kit.mutate(Op.DELETE, VmRef(name="vm-2"))
    kit.heartbeat("h1", [vm for vm in kit.running_on("h1") if vm.name != "vm-2"])
    kit.advance(1.0)
    late = kit.vm("late")
    assert late.state is VmState.SCHEDULED and late.nics[0].ip == "10.3.0.4"


def test_a_regional_network_gives_its_region_and_refuses_another() -> None:
    kit = CoreKit()
    kit.heartbeat("east-1", region="east")
    kit.heartbeat("west-1", region="west")
    kit.vnet("east-net", "10.4.0.0/24", region="east")
    reply = kit.create("a", nics=on("east-net"))
    assert reply.vm is not None and reply.vm.region == "east" and reply.vm.host == "east-1"
    assert kit.create("a", nics=on("east-net")).vm is not None  # repeated: the same VM
    before = unchanged(kit)
    refused = kit.create("b", region="west", nics=on("east-net"))
    assert refused.error is not None and refused.error.code is ErrorCode.INVALID_NETWORK
    assert unchanged(kit) == before


# --------------------------------------------------------------------------- endpoints


def add(name: str, vm_port: int, public_port: int | None = None, **kw: object) -> AddEndpoint:
    return AddEndpoint(vm=name, vm_port=vm_port, public_port=public_port, **kw)  # type: ignore[arg-type]


def test_endpoints_get_ports_from_the_pool_on_the_vms_host_and_answer_at_its_address() -> None:
    kit = kit_with("h1")
    kit.vnet("front", "10.1.0.0/24")
    kit.create("web-1", nics=on("front"))
    reply = kit.mutate(Op.ENDPOINT_ADD, add("web-1", 22))
    assert reply.vm is not None
    [endpoint] = reply.vm.endpoints
    assert (endpoint.public_port, endpoint.address, endpoint.vm_port) == (20000, "192.0.2.1", 22)
    udp = kit.mutate(Op.ENDPOINT_ADD, add("web-1", 53, protocol=EndpointProtocol.UDP))
    assert udp.vm is not None and udp.vm.endpoints[1].public_port == 20000  # per protocol
    kit.mutate(Op.ENDPOINT_ADD, add("web-1", 80, 8080, allow=["203.0.113.0/24"]))
    assert [e.public_port for e in kit.vm("web-1").endpoints] == [20000, 20000, 8080]
    same = kit.mutate(Op.ENDPOINT_ADD, add("web-1", 80, 8080, allow=["203.0.113.0/24"]))
    assert same.vm is not None and len(same.vm.endpoints) == 3  # a repeat


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (add("web-2", 22, 8080), ErrorCode.ADDRESS_IN_USE),
        (add("web-1", 80, 9090), ErrorCode.CONFLICT),
        (add("web-2", 22, allow=["203.0.113.7/24"]), ErrorCode.INVALID_NETWORK),
        (add("plain", 22), ErrorCode.INVALID_NETWORK),
        (add("nobody", 22), ErrorCode.NOT_FOUND),
    ],
    ids=["port-taken-on-host", "other-spec-same-port", "bad-allow", "no-nic", "unknown-vm"],
)
def test_a_bad_endpoint_is_refused_and_changes_nothing(body: AddEndpoint, code: ErrorCode) -> None:
    kit = kit_with("h1")
    kit.vnet("front", "10.1.0.0/24")
    kit.create("web-1", nics=on("front"))
    kit.create("web-2", nics=on("front"))
    kit.create("plain")
    kit.mutate(Op.ENDPOINT_ADD, add("web-1", 80, 8080))
    before = unchanged(kit)
    reply = kit.mutate(Op.ENDPOINT_ADD, body)
    assert reply.error is not None and reply.error.code is code, reply
    assert unchanged(kit) == before


def test_removing_an_endpoint_frees_its_port_and_an_unknown_one_is_not_found() -> None:
    kit = kit_with("h1")
    kit.vnet("front", "10.1.0.0/24")
    kit.create("web-1", nics=on("front"))
    kit.create("web-2", nics=on("front"))
    kit.mutate(Op.ENDPOINT_ADD, add("web-1", 80, 8080))
    gone = kit.mutate(Op.ENDPOINT_REMOVE, RemoveEndpoint(vm="web-1", vm_port=80))
    assert gone.vm is not None and gone.vm.endpoints == []
    missing = kit.mutate(Op.ENDPOINT_REMOVE, RemoveEndpoint(vm="web-1", vm_port=80))
    assert missing.error is not None and missing.error.code is ErrorCode.NOT_FOUND
    taken = kit.mutate(Op.ENDPOINT_ADD, add("web-2", 22, 8080))
    assert taken.vm is not None and taken.vm.endpoints[0].public_port == 8080


def test_after_a_failover_the_endpoint_answers_on_the_new_host_with_the_same_port() -> None:
    kit = kit_with("h1", "h2")
    kit.vnet("front", "10.1.0.0/24")
    kit.create("web-1", nics=on("front"))
    kit.mutate(Op.ENDPOINT_ADD, add("web-1", 22, 8022))
    home = kit.vm("web-1").host
    assert home is not None
    other = "h2" if home == "h1" else "h1"
    address = "192.0.2.2" if other == "h2" else "192.0.2.1"
    events = []
    for _ in range(8):
        kit.heartbeat(other, kit.running_on(other), underlay_ip=address)
        events += vm_events(kit.advance(1.0))
    moved = [e for e in events if e.name == "web-1" and e.host == other]
    assert moved, events
    [endpoint] = moved[0].endpoints
    assert (endpoint.public_port, endpoint.address) == (8022, address)
    kit.heartbeat(other, kit.running_on(other), underlay_ip=address)
    assert kit.vm("web-1").state is VmState.RUNNING


def test_a_port_taken_on_the_new_host_is_replaced_by_one_from_the_pool() -> None:
    kit = kit_with("h1")
    kit.vnet("front", "10.1.0.0/24")
    kit.create("web-1", nics=on("front"))
    kit.mutate(Op.ENDPOINT_ADD, add("web-1", 22))
    kit.mutate(Op.STOP, VmRef(name="web-1"))
    kit.heartbeat("h1", [], underlay_ip="192.0.2.1")
    assert kit.vm("web-1").endpoints[0].public_port is None  # no host, no port
    kit.create("web-2", nics=on("front"))
    kit.mutate(Op.ENDPOINT_ADD, add("web-2", 22, 20000))  # takes web-1's old port
    kit.mutate(Op.START, VmRef(name="web-1"))
    assert kit.vm("web-1").endpoints[0].public_port == 20001


def test_vms_without_nics_are_untouched_by_networks() -> None:
    kit = kit_with("h1")
    reply = kit.mutate(Op.CREATE, CreateVm(name="plain", size="Small"))
    assert reply.vm is not None and reply.vm.nics == [] and reply.vm.endpoints == []
    assert kit.state.counters.mac_serial == 0


@given(st.integers(0, MAX_MAC_SERIAL))
def test_a_nic_serial_is_its_mac_under_the_qemu_prefix(serial: int) -> None:
    """Six lowercase two-digit bytes, QEMU's locally administered prefix, then the serial: a MAC
    names one NIC serial, so no two NICs share one."""
    mac = mac_of(serial)
    octets = mac.split(":")
    assert len(octets) == 6 and all(len(o) == 2 and o == o.lower() for o in octets)
    assert octets[:3] == ["52", "54", "00"]
    assert int("".join(octets[3:]), 16) == serial
