"""``stratus up``: a local cluster in the foreground until Ctrl-C or SIGTERM.

With ``--schedulers 2`` a leader and a standby run, each on its own store; the output says
which leads, and the foreground loop reports every change of leader (a killed leader's standby
takes over; nothing else is needed).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import time
from pathlib import Path

from nats.aio.client import Client

from cli import output, qemukit
from cli.args import AUTO_HTTP
from cli.client import StratusClient, connect
from cli.local import (
    DEFAULT_PORT,
    ClusterSpec,
    LocalCluster,
    clock,
    describe_cluster,
    leader_of,
    port_is_free,
    raise_interrupt,
    report_killed,
    say,
    start_cluster,
    wait_hosts_up,
)
from common.errors import StratusError
from common.waiting import poll

FOREGROUND_POLL_S = 0.5
LEADER_WAIT_S = 15.0

UP_HINTS = """try:  stratus vm create web-1 --size Small --wait
      stratus vm list
      stratus host list
Ctrl-C stops the cluster."""


HTTP_FIRST_PORT = 8080
HTTP_PORTS_TRIED = 100


def http_listen_for(
    requested: str | None, schedulers: int, first_port: int = HTTP_FIRST_PORT
) -> str | None:
    """The portal's address: as given, or (``--http`` alone) the first port from 8080 such that
    every scheduler of the cluster finds its own port (the first's, and the next ones) free."""
    if requested != AUTO_HTTP:
        return requested
    for base in range(first_port, first_port + HTTP_PORTS_TRIED):
        if all(port_is_free(base + offset) for offset in range(schedulers)):
            return f"127.0.0.1:{base}"
    last = first_port + HTTP_PORTS_TRIED - 1
    raise StratusError(f"no free port for the portal in {first_port}-{last}: use --http ADDR")


def _up_port(requested: int | None) -> int:
    if requested is not None:
        if not port_is_free(requested):
            raise StratusError(f"port {requested} is already in use")
        return requested
    return DEFAULT_PORT if port_is_free(DEFAULT_PORT) else -1


def describe_leadership(cluster: LocalCluster, leader: str | None) -> str:
    """Which scheduler leads and which stand by (``scheduler``  leading / standby)."""
    rows = []
    for name, child in cluster.schedulers.items():
        if child.process.poll() is not None:
            role = f"exited ({child.process.returncode})"
        else:
            role = "leading" if name == leader else "standby"
        http = cluster.spec.http_of(name)
        rows.append((name, role, f"portal http://{http}/ while leading" if http else ""))
    return output.columns(rows, indent="  ")


def describe_http(spec: ClusterSpec) -> str:
    """Where the portal is and the token its mutations need (generated for this run)."""
    host, _, port = spec.http_listen.rpartition(":") if spec.http_listen else ("", "", "")
    url = f"http://{host or '127.0.0.1'}:{port}/"
    return output.columns(
        [
            ("portal", url, "HTTP API at /v1, OpenAPI at /openapi.json"),
            ("token", spec.api_token, ""),
        ],
        indent="  ",
    )


def _spec(args: argparse.Namespace) -> ClusterSpec:
    if args.hosts < 1:
        raise StratusError("--hosts must be at least 1")
    data_dir = Path(args.data_dir).resolve()
    schedulers = getattr(args, "schedulers", 1)
    http_listen = http_listen_for(args.http_listen, schedulers)
    return ClusterSpec(
        data_dir=data_dir,
        hosts=args.hosts,
        driver=args.driver,
        capacity=args.capacity,
        nats_port=_up_port(args.nats_port),
        log_level=args.log_level.upper(),
        agent_config=Path(args.agent_config).resolve() if args.agent_config else None,
        boot_dir=qemukit.ensure_boot_kit(data_dir / "boot") if args.driver == "qemu" else None,
        http_listen=http_listen,
        api_token=secrets.token_urlsafe(32) if http_listen else "",
        schedulers=schedulers,
    )


def run_up(args: argparse.Namespace) -> int:
    """``stratus up``: a local cluster in the foreground until Ctrl-C / SIGTERM."""
    spec = _spec(args)
    signal.signal(signal.SIGTERM, raise_interrupt)
    cluster = start_cluster(spec)
    try:
        say(f"Stratus local cluster ({spec.hosts} hosts, {spec.driver} driver, {spec.capacity})")
        say(describe_cluster(cluster))
        if spec.http_listen:
            say(describe_http(spec))
        if cluster.nats.port != DEFAULT_PORT:
            say(f"NATS is not on port {DEFAULT_PORT}; for the other commands run:")
            say(f"  export STRATUS_NATS={cluster.url}")
        asyncio.run(_up(cluster, args.timeout_s or 30.0))
    except KeyboardInterrupt:
        say()
        say("stopping...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        report_killed(cluster.stop())
    say("stopped")
    return 0


async def _up(cluster: LocalCluster, timeout_s: float) -> None:
    """Wait for every host, show the cluster, then watch it until interrupted."""
    nc = await connect(cluster.url)
    try:
        started_s = time.monotonic()
        hosts = await wait_hosts_up(StratusClient(nc), cluster, timeout_s)
        say(f"{len(hosts)} hosts up in {time.monotonic() - started_s:.1f}s")
        leader = await poll(lambda: leader_of(nc, cluster), timeout_s=LEADER_WAIT_S, interval_s=0.1)
        if cluster.spec.schedulers > 1:
            say(describe_leadership(cluster, leader))
        say(output.host_table(hosts) + "\n\n" + UP_HINTS)
        await _stay_in_foreground(cluster, nc, leader)
    finally:
        await nc.close()


async def _stay_in_foreground(cluster: LocalCluster, nc: Client, leader: str | None) -> None:
    """Report daemons that exit and changes of leader, restart fence guards, until Ctrl-C or
    SIGTERM."""
    while True:
        for host in cluster.keep_guards():
            say(f"{clock()}  fence guard of {host} exited; restarted it")
        for child in cluster.children:
            if not child.exit_reported and child.process.poll() is not None:
                child.exit_reported = True
                say(f"{clock()}  {child.describe_exit()}")
        if cluster.spec.schedulers > 1:
            now = await leader_of(nc, cluster)
            if now is not None and now != leader:
                say(f"{clock()}  {now} leads now (was {leader or 'none'})")
                leader = now
        await asyncio.sleep(FOREGROUND_POLL_S)
