"""Chaos, long mode: the fault-injection campaign of tests/chaos with >= 1,000 faults.

Two parts, as in CI. The fake-driver part: a real cluster (nats-server with JetStream on disk,
a leading and a standby scheduler, 4 agents each in its own network namespace) under a load of
creates and deletes, while seeded faults hit it: kill -9 of an agent, of the leader or of both
schedulers, or of nats-server, a graceful NATS restart, SIGSTOP/SIGCONT of an agent, of the
leader or of nats-server (shorter and longer than dead_after_s), one-way and two-way
partitions, a duplicate host id, a second scheduler started by mistake. The QEMU part: 3 real
guests (TCG) on 2 agents with tmpfs data disks, hit by a full disk, agent kills and stops, a
partition, leader kills and NATS stalls, judged from the guests' own consoles.

The observer's verdict and the counts land in bench/results/chaos.json (see docs/chaos.md).
Needs root (namespaces, tmpfs) and QEMU for the QEMU part; exits 1 on any violation.

    .venv/bin/python -m bench chaos --faults 1000 [--seed N] [--qemu-faults M]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop

from bench.harness import machine, write_result
from rigs.chaos import netns
from rigs.chaos.campaign import Report, Settings, run_campaign
from rigs.chaos.qemucampaign import run_qemu_campaign
from rigs.chaos.rig import LEASE_S, SCHEDULERS, TIMINGS
from rigs.qemukit import APT_LINE, NEEDED, boot_kit

QEMU_SHARE = 16
"""By default one fault in this many (and at least MIN_QEMU_FAULTS) hits the QEMU part."""
MIN_QEMU_FAULTS = 6


def part_of(report: Report) -> dict[str, Any]:
    return {
        "faults": len([f for f in report.faults if f.start]),
        "faults_by_kind": report.faults_by_kind(),
        "requests_acked_by_kind": dict(sorted(report.acked.items())),
        "outcomes": dict(sorted(report.outcomes.items())),
        "vms_created": report.vms_created,
        "vms_deleted": report.vms_deleted,
        "violations": len(report.violations),
        "duration_s": round(report.duration_s, 1),
        "converge_s": round(report.converge_s, 1),
    }


def result_of(seed: int, parts: dict[str, Report], replay: str) -> dict[str, Any]:
    violations = [v for report in parts.values() for v in report.violations]
    by_kind: Counter[str] = Counter()
    for report in parts.values():
        by_kind.update(report.faults_by_kind())
    return {
        "seed": seed,
        "replay": replay,
        "timings": {**TIMINGS, "lease_s": LEASE_S},
        "schedulers": len(SCHEDULERS),
        "faults": sum(by_kind.values()),
        "faults_by_kind": dict(sorted(by_kind.items())),
        "parts": {name: part_of(report) for name, report in parts.items()},
        "violations": len(violations),
        "violations_by_kind": dict(sorted(Counter(v.kind for v in violations).items())),
        "violation_details": [f"{v.kind}: {v.detail}" for v in violations[:100]],
        "duration_s": round(sum(r.duration_s for r in parts.values()), 1),
    }


async def _run(seed: int, fake: int, qemu: int, workdir: Path) -> dict[str, Report]:
    parts = {}
    if fake:
        settings = Settings(seed, fake, workdir / "fake", progress_every=100)
        parts["fake"] = await run_campaign(settings)
    if qemu:
        settings = Settings(seed, qemu, workdir / "qemu")
        parts["qemu"] = await run_qemu_campaign(settings, boot_kit())
    return parts


def _cannot_run(qemu: int) -> str | None:
    reason = netns.unavailable_reason()
    if reason is None and qemu and (missing := [t for t in NEEDED if not shutil.which(t)]):
        reason = f"the QEMU part needs {', '.join(missing)}: {APT_LINE} (or --qemu-faults 0)"
    return reason


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=1000, help="in all (both parts)")
    parser.add_argument(
        "--qemu-faults",
        type=int,
        default=None,
        help=f"of those, on real QEMU guests (default: 1 in {QEMU_SHARE}, at least "
        f"{MIN_QEMU_FAULTS}; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--name", default="chaos")
    parser.add_argument("--keep", action="store_true", help="keep the logs even when green")
    args = parser.parse_args(argv)
    qemu = args.qemu_faults
    if qemu is None:
        qemu = max(MIN_QEMU_FAULTS, args.faults // QEMU_SHARE)
    qemu = min(qemu, args.faults)
    reason = _cannot_run(qemu)
    if reason is not None:
        print(f"chaos: cannot run here: {reason}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    workdir = Path(tempfile.mkdtemp(prefix="stratus-chaos-"))
    started = machine()
    print(f"chaos: seed={seed} faults={args.faults} (qemu {qemu}) logs={workdir}", flush=True)
    parts = uvloop.run(_run(seed, args.faults - qemu, qemu, workdir))
    replay = f"python -m bench chaos --faults {args.faults} --qemu-faults {qemu} --seed {seed}"
    path = write_result(args.name, result_of(seed, parts, replay), started)
    for name, report in parts.items():
        print(f"{name}: {report.summary()}")
    print(f"results: {path}")
    if any(report.violations for report in parts.values()):
        for name, report in parts.items():
            print(f"{name} fault timeline:\n{report.timeline()}")
        print(f"replay: {replay}")
        print(f"logs kept: {workdir}")
        return 1
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
