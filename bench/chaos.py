"""Chaos, long mode: the fault-injection campaign of tests/chaos with >= 1,000 faults.

A real cluster (nats-server with JetStream on disk, the scheduler, 4 agents each in its own
network namespace) under a load of creates and deletes, while seeded faults hit it: kill -9 of
an agent, the scheduler or nats-server, a graceful NATS restart, SIGSTOP/SIGCONT of an agent,
one-way and two-way partitions. The observer's verdict and the counts land in
bench/results/chaos.json. Needs root (namespaces); exits 1 on any violation.

    .venv/bin/python -m bench chaos --faults 1000 [--seed N]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop

from bench.harness import machine, write_result
from rigs.chaos import netns
from rigs.chaos.campaign import Report, Settings, run_campaign
from rigs.chaos.rig import TIMINGS


def result_of(report: Report) -> dict[str, Any]:
    return {
        "seed": report.seed,
        "replay": f"python -m bench chaos --faults {len(report.faults)} --seed {report.seed}",
        "timings": TIMINGS,
        "faults": len([f for f in report.faults if f.start]),
        "faults_by_kind": report.faults_by_kind(),
        "requests_acked_by_kind": dict(sorted(report.acked.items())),
        "request_outcomes": dict(sorted(report.outcomes.items())),
        "vms_created": report.vms_created,
        "vms_deleted": report.vms_deleted,
        "violations": len(report.violations),
        "violations_by_kind": report.violations_by_kind(),
        "violation_details": [f"{v.kind}: {v.detail}" for v in report.violations[:100]],
        "duration_s": round(report.duration_s, 1),
        "converge_s": round(report.converge_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--name", default="chaos")
    parser.add_argument("--keep", action="store_true", help="keep the logs even when green")
    args = parser.parse_args(argv)
    reason = netns.unavailable_reason()
    if reason is not None:
        print(f"chaos: cannot run here: {reason}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    workdir = Path(tempfile.mkdtemp(prefix="stratus-chaos-"))
    started = machine()
    print(f"chaos: seed={seed} faults={args.faults} logs={workdir}", flush=True)
    report = uvloop.run(run_campaign(Settings(seed, args.faults, workdir, progress_every=100)))
    path = write_result(args.name, result_of(report), started)
    print(report.summary())
    print(f"results: {path}")
    if report.violations:
        print(f"fault timeline:\n{report.timeline()}")
        print(f"replay: python -m bench chaos --faults {args.faults} --seed {seed}")
        print(f"logs kept: {workdir}")
        return 1
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
