"""The network commands of the CLI: parsing and what they print."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from cli import args as argtypes, output
from cli.main import build_parser, main
from common.network_messages import EndpointInfo, EndpointProtocol, NicInfo, NicRequest, VnetInfo
from tests.unit.cli.test_output import make_vm

NIC = NicInfo(
    vnet="front", ip="10.1.0.2", mac="52:54:00:00:00:01", prefix_len=24, gateway="10.1.0.1"
)


def test_vm_create_takes_nics_in_order_each_with_its_address() -> None:
    args = build_parser().parse_args(
        ["vm", "create", "web-1", "--size", "Small", "--vnet", "front", "--ip", "10.1.0.9",
         "--vnet", "back"]
    )  # fmt: skip
    assert args.nics == [NicRequest(vnet="front", ip="10.1.0.9"), NicRequest(vnet="back")]
    plain = build_parser().parse_args(["vm", "create", "web-1", "--size", "Small"])
    assert plain.nics is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--ip", "10.1.0.9"],
        ["--vnet", "front", "--ip", "10.1.0.9", "--ip", "10.1.0.8"],
        ["--vnet", "Front"],
    ],
    ids=["ip-without-vnet", "two-ips-for-one-nic", "bad-network-name"],
)
def test_bad_nic_options_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["vm", "create", "web-1", "--size", "Small", *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "ports"), [("22", (None, 22)), ("8022:22", (8022, 22)), ("65535:1", (65535, 1))]
)
def test_ports_are_port_or_public_colon_port(text: str, ports: tuple[int | None, int]) -> None:
    assert argtypes.port_pair(text) == ports


@pytest.mark.parametrize("text", ["", "0", "70000", "a:22", "8022:", ":22", "1:2:3"])
def test_bad_ports_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        argtypes.port_pair(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["vnet", "list", "-o", "json"],
        ["vnet", "create", "front", "--cidr", "10.1.0.0/24", "--output", "json"],
        ["vm", "endpoint", "list", "web-1", "-o", "json"],
    ],
    ids=["vnet-list", "vnet-create", "endpoint-list"],
)
def test_network_commands_take_the_global_options_after_the_verb(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).output == "json"


def test_endpoint_add_options() -> None:
    args = build_parser().parse_args(
        ["vm", "endpoint", "add", "web-1", "--port", "8022:22", "--allow", "203.0.113.7",
         "--allow", "198.51.100.0/24", "--udp"]
    )  # fmt: skip
    assert (args.name, args.port, args.udp) == ("web-1", (8022, 22), True)
    assert args.allow == ["203.0.113.7/32", "198.51.100.0/24"]


def test_vm_list_shows_the_first_nic() -> None:
    vms = [make_vm("a", nics=[NIC]), make_vm("b", nics=[NIC, NIC]), make_vm("c")]
    rows = [line.split() for line in output.vm_table(vms).splitlines()[1:]]
    assert [row[6] for row in rows] == ["front/10.1.0.2", "front/10.1.0.2,+1", "-"]


def test_vm_show_lists_nics_and_endpoints() -> None:
    endpoints = [
        EndpointInfo(vm_port=22, protocol=EndpointProtocol.TCP, public_port=20000,
                     address="192.0.2.1", allow=["203.0.113.0/24"]),
        EndpointInfo(vm_port=53, protocol=EndpointProtocol.UDP, public_port=None, address=None),
    ]  # fmt: skip
    lines = output.vm_details(make_vm("web-1", nics=[NIC], endpoints=endpoints)).splitlines()
    assert (
        lines[-3] == "nics:             front 10.1.0.2/24 (gateway 10.1.0.1, mac 52:54:00:00:00:01)"
    )
    assert lines[-2] == "endpoints:        192.0.2.1:20000/tcp -> port 22 (allow 203.0.113.0/24)"
    assert lines[-1] == "                  -/udp (not placed) -> port 53"


def test_vnet_table() -> None:
    vnet = VnetInfo(
        name="front",
        cidr="10.1.0.0/24",
        region=None,
        vni=4096,
        gateway="10.1.0.1",
        addresses_total=253,
        addresses_used=2,
        vms=2,
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert output.vnet_table([vnet]).splitlines() == [
        "NAME   CIDR         REGION  VNI   GATEWAY   ADDRESSES  VMS",
        "front  10.1.0.0/24  -       4096  10.1.0.1  2/253      2",
    ]
