"""``stratus simulate``: how many hosts does a trace need? Replayed with the scheduler's placement
and rebalancer.

    stratus simulate --trace vms.csv.gz [--host-size 64c/256g] [--hosts N]
                     [--config scheduler.toml] [--policy binpack|spread] [--no-rebalance]

Without flags the replay uses the scheduler's default configuration: its default policy and
its rebalancer with the default knobs; ``--config`` reads them (``scorer`` and ``[rebalance]``)
from a scheduler config file instead.

Reads an Azure 2017 style VM trace (``vm_id,arrival_s,batch_id,vcpus,mem_gb,censored,...``) or
an Alibaba 2023 style pod list (``name,cpu_milli,memory_mib,...,creation_time,deletion_time``),
plain or gzipped, and replays it on equal hosts (see ``scheduler/placement/simulate.py``).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec

from common.config import SchedulerConfig, load_config
from common.errors import ConfigError
from common.resources import parse_capacity
from scheduler.placement.simulate import (
    SimPolicy,
    TraceVm,
    equal_hosts,
    hosts_needed,
    read_alibaba_pods,
    read_azure,
    simulate,
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = commands.add_parser(
        "simulate", help="replay a VM trace: how many hosts does it need?", description=__doc__
    )
    sim.add_argument("--trace", type=Path, required=True, metavar="FILE", help=".csv or .csv.gz")
    sim.add_argument(
        "--hosts", type=int, metavar="N", help="fleet size (default: more than ever needed)"
    )
    sim.add_argument("--host-size", default="64c/256g", help="capacity of each host (64c/256g)")
    sim.add_argument(
        "--config", type=Path, metavar="FILE", help="scheduler config (default: its defaults)"
    )
    sim.add_argument(
        "--policy", choices=("binpack", "spread"), help="placement policy (default: the config's)"
    )
    sim.add_argument(
        "--no-rebalance", action="store_true", help="replay without the rebalancer's migrations"
    )
    sim.add_argument(
        "--group-batches", action="store_true", help="keep a batch's VMs on the same hosts"
    )
    sim.add_argument("--output", "-o", choices=("text", "json"), default="text")


def read_trace(path: Path) -> list[TraceVm]:
    """An Azure 2017 or Alibaba 2023 trace, told apart by its header."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    text = gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()
    header = text.split("\n", 1)[0]
    if header.startswith("vm_id,arrival_s"):
        return read_azure(io.StringIO(text))
    if header.startswith("name,cpu_milli"):
        return read_alibaba_pods(io.StringIO(text))
    raise ConfigError(f"{path}: not an Azure 2017 or Alibaba 2023 trace (header {header!r})")


def run_simulate(args: argparse.Namespace) -> int:
    capacity = parse_capacity(args.host_size)
    vms = read_trace(args.trace)
    if args.hosts is not None and args.hosts < 1:
        raise ConfigError("--hosts must be at least 1")
    count = args.hosts if args.hosts is not None else hosts_needed(vms, capacity)
    policy = sim_policy(args)
    result, _ = simulate(vms, equal_hosts(count, capacity), policy, bound_capacity=capacity)
    report: dict[str, Any] = {
        "vms": result.vms,
        "hosts": count,
        "host_size": str(capacity),
        "policy": policy.scorer,
        "rebalance": msgspec.to_builtins(policy.rebalance),
        "placed": result.placed,
        "rejected": result.rejected,
        "peak_hosts_in_use": result.peak_hosts,
        "peak_lower_bound": round(result.peak_lower_bound, 2),
        "peak_ratio": round(result.peak_ratio, 4),
        "time_averaged_ratio": round(result.time_averaged_ratio, 4),
        "migrations": result.migrations,
        "vms_migrated": result.vms_migrated,
        "migrated_fraction": round(result.migrated_fraction, 4),
        "migrations_per_vm_hour": round(result.migrations_per_vm_hour, 5),
        "busiest_hour_migrations": result.busiest_hour_migrations,
    }
    print(json.dumps(report, indent=2) if args.output == "json" else _text(report))
    return 0


def sim_policy(args: argparse.Namespace) -> SimPolicy:
    """The scheduler's configuration (its defaults, or ``--config``) with the flags applied."""
    config = load_config(SchedulerConfig, str(args.config) if args.config else None, {})
    rebalance = config.rebalance
    if args.no_rebalance:
        rebalance = msgspec.structs.replace(rebalance, enabled=False)
    policy = SimPolicy(config.scorer, group_batches=args.group_batches, rebalance=rebalance)
    return replace(policy, scorer=args.policy) if args.policy else policy


def _text(report: dict[str, Any]) -> str:
    verdict = (
        f"{report['peak_hosts_in_use']} hosts of {report['host_size']} were in use at the peak"
        if report["rejected"] == 0
        else f"{report['hosts']} hosts are not enough: {report['rejected']} vms rejected"
    )
    return "\n".join(
        [
            verdict,
            f"vms            {report['vms']} ({report['placed']} placed, "
            f"{report['rejected']} rejected)",
            f"lower bound    {report['peak_lower_bound']} hosts at the peak "
            f"(max of Σcpu/host cpu, Σmem/host mem)",
            f"peak ratio     {report['peak_ratio']}  (hosts in use / lower bound)",
            f"time-averaged  {report['time_averaged_ratio']}  (∫hosts dt / ∫lower bound dt)",
            f"policy         {report['policy']}, rebalancer "
            + ("on" if report["rebalance"]["enabled"] else "off"),
            f"migrations     {report['migrations']} of {report['vms_migrated']} vms "
            f"({report['migrated_fraction']:.1%} of those placed; "
            f"{report['migrations_per_vm_hour']} per vm-hour; "
            f"{report['busiest_hour_migrations']} in the busiest hour)",
        ]
    )
