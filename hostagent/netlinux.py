"""The Linux network backend: a host's share of the virtual networks made of kernel objects.

Per network (VNI ``N``): a bridge ``stbrN`` holding the gateway address (the same address and
MAC on every host, see hostagent/netrender.py for why and how it stays local), a VXLAN device
``stvxN`` (id N, UDP 4789, ``local`` the agent's underlay address, learning on) enslaved to it
with an all-zeros FDB entry per peer (head-end replication: broadcast and unknown frames go to
every other host carrying the network), and a dnsmasq with the static leases of this host's
VMs. Endpoints and isolation are the agent's nftables tables, replaced whole on every change.
Everything is driven with ``ip``/``bridge``/``nft``/``dnsmasq`` (iproute2, nftables,
dnsmasq-base): a few commands per change, nothing per packet, so a dependency such as pyroute2
would buy little.

Every :meth:`apply` observes the host (four commands: links and addresses, FDB, nftables tables,
``ip_forward``; the dnsmasq pid files), plans (hostagent/netplan.py, pure) and carries the plan
out, so it is idempotent, removes what the configuration no longer names (also what an earlier
agent left: any ``stbr*``/``stvx*`` link, any dnsmasq of the state directory) and re-adopts what
is still right (links, running dnsmasq) after a restart without touching it. Kernel objects and
dnsmasq outlive the agent, so guests keep their network while it restarts.

:meth:`run_selfcheck` repeats the same observe-and-plan every ``selfcheck_interval_s``
(level-triggered healing: a bridge someone deleted, a dnsmasq that died, a table flushed are made
again, and taps that lost their bridge, named by their ``ifalias``, are enslaved again); when
the host matches, it costs those four commands and nothing else. Before the first
configuration it removes what an earlier agent left if no VM can be using it (no tap on the
host): a host that should carry no network is sent no configuration at all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
from pathlib import Path
from typing import assert_never

import msgspec

from common.config import AgentConfig
from common.errors import ConfigError, NetworkError
from common.netconfig import NetConfig
from common.network_messages import ConfigureNetworks, UpdateNetworks
from hostagent import dnsmasq
from hostagent.hostcmd import HostCommands
from hostagent.netplan import (
    VXLAN_PORT,
    ZERO_MAC,
    AddAddress,
    AddBridge,
    AddPeer,
    AddVxlan,
    DeleteAddress,
    DeleteLink,
    DeletePeer,
    DhcpState,
    EnableForwarding,
    Link,
    LoadRules,
    Observed,
    ReloadDhcp,
    SetLink,
    StartDhcp,
    Step,
    StopDhcp,
    VxlanInfo,
    plan,
    unused_leftovers,
)
from hostagent.netrender import TABLE, DhcpFiles, rules_replace
from hostagent.netwanted import NOTHING, Wanted, check_config
from hostagent.network import NetworkBackend

log = logging.getLogger(__name__)

SELFCHECK_S = 10.0
TOOLS = ("ip", "bridge", "nft", "dnsmasq")
APT_LINE = "apt-get install -y --no-install-recommends iproute2 nftables dnsmasq-base"


def uses_kernel_networks(config: AgentConfig) -> bool:
    """Whether this agent builds its guests' networks in the kernel: with the qemu driver,
    unless its underlay address is a loopback one. That is the one-machine local cluster
    (``stratus up``), whose agents share one network namespace and would take each other's
    bridges and DHCP servers for leftovers: its networks stay simulated, its guests boot without
    a NIC, and the machine's networking is left as it is."""
    if config.driver != "qemu":
        return False
    return not (config.underlay_ip and ipaddress.ip_address(config.underlay_ip).is_loopback)


def network_dir(config: AgentConfig, host: str) -> Path:
    """Where a host's DHCP servers keep their files: ``<data_dir>/<host_id>/network``."""
    return Path(config.data_dir) / host / "network"


def check_host_tools() -> None:
    """``ConfigError`` saying what to install when a tool the backend runs is missing."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"guest networking needs {', '.join(missing)}: {APT_LINE}")


LinkStep = (
    AddBridge | AddVxlan | SetLink | DeleteLink | AddAddress | DeleteAddress | AddPeer | DeletePeer
)


# --------------------------------------------------------------------------- reading the host


class _LinkInfo(msgspec.Struct):
    info_kind: str = ""
    info_data: dict[str, object] = {}


class _AddrInfo(msgspec.Struct):
    family: str = ""
    local: str = ""
    prefixlen: int = 0


class _IpLink(msgspec.Struct):
    """One entry of ``ip -d -j addr show`` (fields we do not read are ignored)."""

    ifname: str
    mtu: int = 0
    address: str = ""
    flags: list[str] = []
    master: str | None = None
    ifalias: str = ""
    linkinfo: _LinkInfo | None = None
    addr_info: list[_AddrInfo] = []


class _Fdb(msgspec.Struct):
    mac: str = ""
    ifname: str = ""
    dst: str = ""


def _vxlan_info(info: _LinkInfo | None) -> VxlanInfo | None:
    if info is None or info.info_kind != "vxlan":
        return None
    data = info.info_data
    vni, port, local = data.get("id"), data.get("port"), data.get("local", "")
    return VxlanInfo(
        vni=vni if isinstance(vni, int) else -1,
        local=local if isinstance(local, str) else "",
        port=port if isinstance(port, int) else -1,
        learning=data.get("learning") is True,
    )


def parse_links(text: str) -> dict[str, Link]:
    """``ip -d -j addr show`` → every link by name."""
    try:
        entries = msgspec.json.decode(text or "[]", type=list[_IpLink])
    except msgspec.DecodeError as exc:
        raise NetworkError(f"cannot read ip -j addr show: {exc}") from exc
    return {
        entry.ifname: Link(
            name=entry.ifname,
            kind=entry.linkinfo.info_kind if entry.linkinfo is not None else "",
            mtu=entry.mtu,
            mac=entry.address,
            up="UP" in entry.flags,
            master=entry.master,
            alias=entry.ifalias,
            addresses=frozenset(
                f"{a.local}/{a.prefixlen}" for a in entry.addr_info if a.family == "inet"
            ),
            vxlan=_vxlan_info(entry.linkinfo),
        )
        for entry in entries
    }


def parse_peers(text: str) -> dict[str, frozenset[str]]:
    """``bridge -j fdb show`` → per device, the destinations of its all-zeros entries."""
    try:
        entries = msgspec.json.decode(text or "[]", type=list[_Fdb])
    except msgspec.DecodeError as exc:
        raise NetworkError(f"cannot read bridge -j fdb show: {exc}") from exc
    peers: dict[str, set[str]] = {}
    for entry in entries:
        if entry.mac == ZERO_MAC and entry.dst:
            peers.setdefault(entry.ifname, set()).add(entry.dst)
    return {name: frozenset(dsts) for name, dsts in peers.items()}


def link_commands(step: LinkStep) -> list[list[str]]:
    """The ``ip``/``bridge`` commands of one link step."""
    match step:
        case AddBridge(name=name):
            # No IPv6 of the host's own on the bridge (nor on VXLAN devices and taps): none of
            # its router solicitations or DAD reach guests or other hosts.
            return [
                ["ip", "link", "add", "name", name, "type", "bridge"],
                ["ip", "link", "set", "dev", name, "addrgenmode", "none"],
            ]
        case AddVxlan(name=name, vni=vni, local=local):
            add = ["ip", "link", "add", "name", name, "type", "vxlan", "id", str(vni)]
            add += ["dstport", str(VXLAN_PORT), "learning"]
            return [
                add + (["local", local] if local else []),
                ["ip", "link", "set", "dev", name, "addrgenmode", "none"],
            ]
        case SetLink(name=name, mac=mac, mtu=mtu, master=master):
            args = ["ip", "link", "set", "dev", name]
            args += ["address", mac] if mac is not None else []
            args += ["mtu", str(mtu)] if mtu is not None else []
            args += ["master", master] if master is not None else []
            return [[*args, "up"]]
        case DeleteLink(name=name):
            return [["ip", "link", "del", "dev", name]]
        case AddAddress(link=link, cidr=cidr):
            return [["ip", "addr", "replace", cidr, "dev", link]]
        case DeleteAddress(link=link, cidr=cidr):
            return [["ip", "addr", "del", cidr, "dev", link]]
        case AddPeer(vxlan=vxlan, address=address):
            return [["bridge", "fdb", "append", ZERO_MAC, "dev", vxlan, "dst", address]]
        case DeletePeer(vxlan=vxlan, address=address):
            return [["bridge", "fdb", "del", ZERO_MAC, "dev", vxlan, "dst", address]]
        case _:
            assert_never(step)


# --------------------------------------------------------------------------- the backend


class LinuxNetworks:
    name: str = "linux"

    def __init__(
        self,
        state_dir: Path,
        underlay_ip: str = "",
        *,
        netns: str | None = None,
        selfcheck_interval_s: float = SELFCHECK_S,
    ) -> None:
        self.state_dir = state_dir
        """Where the dnsmasq files live (``<data_dir>/<host>/network``)."""
        self.underlay_ip = underlay_ip
        """This host's address on the underlay: the VXLAN source, what peers send to."""
        self.commands = HostCommands(netns)
        self.selfcheck_interval_s = selfcheck_interval_s
        self.heals = 0
        """How many self-checks found something to repair."""
        self._wanted: Wanted = NOTHING
        """The last configuration applied in full."""
        self._config = ConfigureNetworks(digest="")
        """The same as it came (what an update applies to)."""
        self._target: Wanted | None = None
        """The last configuration asked for (None before the first): what the self-check holds
        the host to, so it finishes an apply that failed half-way instead of undoing it."""
        self._rules: str | None = None
        """The tables text this process last loaded (None: not known, e.g. after a restart)."""
        # apply() and the self-check both observe then act: they must not interleave.
        self._lock = asyncio.Lock()

    @property
    def applied_digest(self) -> str:
        return self._wanted.digest

    def has_network(self, vni: int) -> bool:
        return self._wanted.network(vni) is not None

    async def apply(self, config: ConfigureNetworks) -> None:
        wanted = check_config(config, underlay_ip=self.underlay_ip)  # refused: nothing touched
        async with self._lock:
            self._target = wanted
            steps = await self._converge(wanted)
            self._wanted, self._config = wanted, config
        log.debug(  # the agent logs the outcome
            "networks applied digest=%s networks=%d endpoints=%d steps=%d",
            wanted.digest,
            len(wanted.networks),
            len(wanted.endpoints),
            len(steps),
        )

    async def update(self, delta: UpdateNetworks) -> None:
        """The configuration in place with ``delta``'s changes, made as :meth:`apply` does (a
        host's kernel objects are few: merging in full costs nothing next to making them)."""
        merged = NetConfig.of(self._config)
        if self._wanted.digest != delta.base:
            raise NetworkError(f"update based on {delta.base!r}, not {self._wanted.digest!r}")
        problem = merged.problem(delta)
        if problem is None:
            merged.apply(delta)
            if merged.digest != delta.digest:
                problem = f"its result's digest is not {delta.digest}"
        if problem is not None:
            raise NetworkError(f"update not applied: {problem}")
        await self.apply(merged.whole())

    async def check(self) -> list[Step]:
        """Make the host match the last configuration asked for again; the steps it took."""
        async with self._lock:
            target = self._target
            if target is None:  # before the first configuration
                return await self._remove_unused_leftovers()
            steps = await self._converge(target)
            self._wanted = target
        if steps:
            self.heals += 1
            log.warning(
                "networks healed digest=%s steps=%s",
                target.digest,
                ",".join(type(step).__name__ for step in steps),
            )
        return steps

    async def run_selfcheck(self) -> None:
        """Check every ``selfcheck_interval_s``, forever; a failed check is logged and retried."""
        while True:
            await asyncio.sleep(self.selfcheck_interval_s)
            try:
                await self.check()
            except NetworkError as exc:
                log.error("network self-check failed error=%s", exc)

    async def close(self) -> None:
        """Nothing to release: links, tables and dnsmasq stay for the guests."""

    # ------------------------------------------------------------------ observe, plan, act

    async def _remove_unused_leftovers(self) -> list[Step]:
        """What an earlier agent left that no VM uses (no tap on the host): removed."""
        observed = await self._observe()
        if not unused_leftovers(observed):
            return []
        steps = await self._converge(NOTHING, observed)
        log.warning(
            "networks left by an earlier agent removed, no vm uses them steps=%s",
            ",".join(type(step).__name__ for step in steps),
        )
        return steps

    async def _converge(self, wanted: Wanted, observed: Observed | None = None) -> list[Step]:
        observed = observed or await self._observe()
        if wanted.networks and self.underlay_ip:
            self._check_underlay(observed)
        steps = plan(
            wanted,
            observed,
            underlay_ip=self.underlay_ip,
            state_dir=self.state_dir,
            dhcp_as_root=dnsmasq.run_as_root(self.state_dir),
        )
        for step in steps:
            log.debug("network step %s", type(step).__name__)
            await self._do(step)
        return steps

    def _check_underlay(self, observed: Observed) -> None:
        prefix = f"{self.underlay_ip}/"
        if not any(
            a.startswith(prefix) for link in observed.links.values() for a in link.addresses
        ):
            raise NetworkError(
                f"underlay address {self.underlay_ip} is on no interface of this host"
            )

    async def _observe(self) -> Observed:
        c = self.commands
        links = parse_links(await c.check("ip", "-d", "-j", "addr", "show"))
        peers = parse_peers(await c.check("bridge", "-j", "fdb", "show"))
        tables = (await c.check("nft", "list", "tables")).splitlines()
        present = {family for family in ("inet", "bridge") if f"table {family} {TABLE}" in tables}
        rules: str | None = None
        if not present:
            rules = ""
        elif len(present) == 2 and self._rules:
            rules = self._rules
        forwarding = await c.read_sysctl("net/ipv4/ip_forward") == "1"
        dhcp: dict[int, DhcpState] = dnsmasq.observe(self.state_dir)
        return Observed(links, peers, dhcp, rules, forwarding)

    async def _do(self, step: Step) -> None:
        match step:
            case LoadRules(tables=tables):
                self._rules = None
                await self.commands.check("nft", "-f", "-", stdin=rules_replace(tables))
                self._rules = tables
            case EnableForwarding():
                await self.commands.write_sysctl("net/ipv4/ip_forward", "1")
            case StartDhcp(vni=vni, conf=conf, hosts=hosts):
                await dnsmasq.start(self.commands, self._dhcp_files(vni), conf, hosts)
            case ReloadDhcp(vni=vni, hosts=hosts):
                await dnsmasq.reload(self._dhcp_files(vni), hosts)
            case StopDhcp(vni=vni):
                await dnsmasq.stop(self._dhcp_files(vni))
            case AddBridge(name=name):
                for argv in link_commands(step):
                    await self.commands.check(*argv)
                # Endpoints used from the host itself as 127.0.0.1:PORT leave through the bridge.
                await self.commands.write_sysctl(f"net/ipv4/conf/{name}/route_localnet", "1")
            case _:
                for argv in link_commands(step):
                    await self.commands.check(*argv)

    def _dhcp_files(self, vni: int) -> DhcpFiles:
        return DhcpFiles(self.state_dir, vni)


_: type[NetworkBackend] = LinuxNetworks
