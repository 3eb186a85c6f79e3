"""``python -m hostagent`` (and ``stratus agent``): flags → config → logging → uvloop.run."""

from __future__ import annotations

import argparse
import logging
import sys

import uvloop

from common.config import AgentConfig, load_config, nats_environment
from common.errors import ConfigError
from common.logging import setup_logging
from hostagent.app import AgentApp, resolve_settings
from hostagent.simpool import SimPool, resolve_pool_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stratus agent", description="Stratus host agent: runs the VMs of one host."
    )
    add = parser.add_argument
    add("--config", metavar="FILE", help="TOML file with AgentConfig keys")
    add("--nats", dest="nats_url", metavar="URL", help="NATS server URL (default: $STRATUS_NATS)")
    add("--creds", dest="nats_creds", metavar="FILE", help="NATS credentials file")
    add("--nkey-seed", dest="nats_nkey_seed", metavar="FILE", help="this host's nkey seed file")
    add("--tls-ca", dest="nats_tls_ca", metavar="FILE", help="CA of the NATS server's certificate")
    add("--host-id", metavar="ID", help="this host's id (default: the hostname)")
    add("--capacity", metavar="64c/256g", help="declared capacity (default: measured)")
    add("--region", metavar="R")
    add("--fault-domain", metavar="FD")
    add(
        "--underlay-ip",
        metavar="ADDR",
        help="IPv4 address other hosts reach this one at (VXLAN, endpoints); default: none",
    )
    add(
        "--replica-port",
        type=int,
        metavar="N",
        help="NBD port of this host's replica server (on the underlay address); 0: any free",
    )
    add("--disk-capacity", metavar="500g", help="space for disks and replicas (default: measured)")
    add("--labels", metavar="k=v,k2=v2", type=parse_labels)
    add("--cpu-overcommit", type=float, metavar="RATIO")
    add("--data-dir", metavar="DIR", help="where executions.jsonl is written")
    add("--driver", choices=["fake", "qemu"])
    add("--reserved", metavar="2c/4g", help="kept back for the host when capacity is measured")
    add("--boot-dir", metavar="DIR", help="qemu: the boot kit (deploy/images/build-tiny.sh DIR)")
    add("--accel", choices=["auto", "kvm", "tcg"], help="qemu: accelerator (auto: self-test)")
    add("--max-concurrent-boots", type=int, metavar="N", help="qemu: boots at once")
    add("--boot-timeout", dest="boot_timeout_s", type=float, metavar="S")
    add("--stop-timeout", dest="stop_timeout_s", type=float, metavar="S")
    add("--fake-start-delay", dest="fake_start_delay_s", type=float, metavar="S")
    add("--fake-migration-setup", dest="fake_migration_setup_s", type=float, metavar="S")
    add(
        "--fake-migration-bandwidth",
        dest="fake_migration_bandwidth_mib_s",
        type=float,
        metavar="MIB_S",
        help="fake: a live migration's fixed cost (S) and its rate",
    )
    add(
        "--fake-replica-fill-bandwidth",
        dest="fake_replica_fill_mib_s",
        type=float,
        metavar="MIB_S",
        help="fake: how fast a replica is filled (copied) or a joining copy brought in step",
    )
    add("--heartbeat-interval", dest="heartbeat_interval_s", type=float, metavar="S")
    add("--fence-after", dest="fence_after_s", type=float, metavar="S")
    add("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add("--simulate", type=int, metavar="N", help="run N simulated hosts in this process")
    add("--simulate-prefix", default="sim", metavar="P", help="simulated host ids: P-00001, ...")
    add("--simulate-fault-domains", type=int, default=3, metavar="K", help="fd-0 .. fd-K-1")
    return parser


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` → ``{"k": "v", "k2": "v2"}``."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"label {item!r} is not like key=value")
        labels[key.strip()] = value.strip()
    return labels


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = nats_environment() | {
        key: value
        for key, value in vars(args).items()
        if key not in _NOT_CONFIG and value is not None
    }
    try:
        config = load_config(AgentConfig, args.config, overrides)
        if args.simulate is not None:
            return _simulate(args, config)
        settings = resolve_settings(config)
    except ConfigError as exc:
        print(f"stratus agent: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, name="hostagent")
    app = AgentApp(settings)
    uvloop.run(app.run())
    if app.refused:
        print(f"stratus agent: {app.refused}", file=sys.stderr)
        return EXIT_HOST_ID_REFUSED
    return 0


EXIT_HOST_ID_REFUSED = 3
"""Another live agent holds this host id (a supervisor should not restart the agent at once)."""


_NOT_CONFIG = ("config", "log_level", "simulate", "simulate_prefix", "simulate_fault_domains")


def _simulate(args: argparse.Namespace, config: AgentConfig) -> int:
    """``--simulate N``: one process, N simulated hosts (hostagent/simpool.py)."""
    pool = resolve_pool_settings(
        config, args.simulate, args.simulate_prefix, args.simulate_fault_domains
    )
    setup_logging(args.log_level, name="hostagent")
    if args.log_level != "DEBUG":  # per-VM lines from thousands of hosts would dominate the CPU
        logging.getLogger("hostagent.agent").setLevel(logging.WARNING)
    sim = SimPool(pool)
    uvloop.run(sim.run())
    if sim.refused and len(sim.refused) == pool.count:
        reason = next(iter(sim.refused.values()))
        print(f"stratus agent: every simulated host id is held: {reason}", file=sys.stderr)
        return EXIT_HOST_ID_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
