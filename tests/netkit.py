"""Hosts and guests as network namespaces, for the tests of the Linux network backend and of
the QEMU driver's NICs.

A *host* is a namespace with a veth pair to the root namespace (its address there is how the
root namespace reaches it, as a client of its endpoints would) and, between two hosts, a veth
"underlay" of their own (rigs/chaos/netns.py names and addresses them; a crashed run's leftovers
are removed by the next). A *guest* is a namespace whose ``eth0`` is a veth plugged into a host's
bridge: it gets its address by DHCP like a VM would, in milliseconds, so isolation and endpoint
rules are checked without booting anything. Guest networks use 10.214.0.0/16: those addresses
exist only on bridges inside these namespaces.

Closing stops every dnsmasq the backends started (a namespace lives on while a process holds
it) and deletes every namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rigs.chaos import netns as chaos_netns
from rigs.chaos.netns import Network, run_ip

TOOLS = ("ip", "bridge", "nft", "dnsmasq", "busybox")
APT_LINE = (
    "apt-get install -y --no-install-recommends iproute2 nftables dnsmasq-base busybox-static"
)
UDHCPC_SCRIPT = """#!/bin/sh
# The guest's DHCP client: configure eth0 and print what the server said.
case "$1" in
bound|renew)
    ip addr add "$ip/$mask" dev "$interface"
    ip link set dev "$interface" mtu "$mtu"
    ip route replace default via "$router" dev "$interface"
    echo "ip=$ip mask=$mask router=$router mtu=$mtu hostname=$hostname"
    ;;
esac
"""


def require_netns() -> None:
    """Skip without root or the tools (with the apt line); fail instead in CI."""
    reason = None
    if os.geteuid() != 0:
        reason = "network namespaces need root"
    elif missing := [tool for tool in TOOLS if shutil.which(tool) is None]:
        reason = f"{', '.join(missing)} not found: {APT_LINE}"
    if reason is None:
        return
    if os.environ.get("STRATUS_REQUIRE_NETNS") == "1" or os.environ.get("CI"):
        pytest.fail(f"network tests are required here: {reason}")
    pytest.skip(reason)


@dataclass
class Host:
    netns: str
    outside: str
    """Its address as the root namespace reaches it (the root end is ``root_addr``)."""
    root_addr: str
    underlay_ip: str = ""


@dataclass
class Guest:
    netns: str
    mac: str


@dataclass
class Netbed:
    workdir: Path
    network: Network = field(default_factory=Network)
    guests: list[str] = field(default_factory=list)

    def host(self, label: str) -> Host:
        netns = self.network.add_namespace(label)
        pair = self.network.pairs[-1]
        return Host(netns, pair.inner_addr, pair.root_addr)

    def join(self, a: Host, b: Host) -> None:
        """An underlay between two hosts: their ``underlay_ip`` is set."""
        a.underlay_ip, b.underlay_ip = self.network.join(a.netns, b.netns)

    def guest(self, host: Host, bridge: str, mac: str) -> Guest:
        """A guest namespace on ``host``'s ``bridge`` with ``mac`` on its eth0 (no address yet:
        :meth:`dhcp` asks for one)."""
        index = len(self.guests)
        netns = f"{self.network.prefix}-g{index}"
        outer = f"{self.network.prefix}g{index}"
        run_ip("ip", "netns", "add", netns)
        self.guests.append(netns)
        run_ip("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", netns,
               netns=host.netns)  # fmt: skip
        run_ip("ip", "link", "set", "dev", outer, "master", bridge, "up", netns=host.netns)
        run_ip("ip", "link", "set", "dev", "eth0", "address", mac, "up", netns=netns)
        run_ip("ip", "link", "set", "dev", "lo", "up", netns=netns)
        return Guest(netns, mac)

    def dhcp(self, guest: Guest) -> dict[str, str]:
        """Ask for an address with busybox udhcpc; what the server answered (empty: none)."""
        script = self.workdir / "udhcpc.sh"
        if not script.exists():
            script.write_text(UDHCPC_SCRIPT)
            script.chmod(0o755)
        done = in_netns(
            guest.netns, "busybox", "udhcpc", "-i", "eth0", "-s", str(script), "-O", "mtu",
            "-q", "-n", "-f", "-t", "4", "-T", "1",
        )  # fmt: skip
        lines = [line for line in done.stdout.splitlines() if line.startswith("ip=")]
        return dict(field.split("=", 1) for field in lines[-1].split()) if lines else {}

    def close(self, state_dirs: list[Path]) -> None:
        for state_dir in state_dirs:
            stop_dnsmasq(state_dir)
        for netns in self.guests:
            run_ip("ip", "netns", "del", netns, check=False)
        self.network.close()


def stop_dnsmasq(state_dir: Path) -> None:
    """Kill every dnsmasq whose pid file is in ``state_dir`` (what a backend left running)."""
    for pid_file in state_dir.glob("dnsmasq-*.pid") if state_dir.is_dir() else []:
        try:
            pid = int(pid_file.read_text().strip())
            if os.fsencode(state_dir) in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            continue


def in_netns(
    netns: str | None, *args: str, stdin: str | None = None, timeout_s: float = 10
) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(
        [*prefix, *args], input=stdin, capture_output=True, text=True, timeout=timeout_s,
        check=False,
    )  # fmt: skip


def http_get(netns: str | None, address: str, port: int = 80) -> str:
    """The body busybox ``nc`` got for ``GET /`` from ``address:port`` ("" for none)."""
    done = in_netns(
        netns, "busybox", "nc", "-w", "2", address, str(port), stdin="GET / HTTP/1.0\r\n\r\n"
    )
    return done.stdout.partition("\n\n")[2].strip()  # text mode: \r\n reads as \n


def pings(netns: str, address: str) -> bool:
    return in_netns(netns, "busybox", "ping", "-c", "1", "-W", "1", address).returncode == 0


def serve_http(netns: str, root: Path, text: str) -> subprocess.Popen[bytes]:
    """busybox httpd on port 80 of ``netns`` serving ``text`` (stop it with ``kill()``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(text + "\n")
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, "busybox", "httpd", "-f", "-p", "80", "-h", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def clean_leftovers() -> None:
    chaos_netns.clean_leftovers()
