"""``python -m bench [--smoke]``: run every benchmark, one after the other, each in its own
process (so one's load never overlaps another's); results land in bench/results/.

``python -m bench NAME [args]`` runs one of ON_DEMAND alone (not part of the default run):
``python -m bench chaos --faults 1000 [--seed N]``, ``python -m bench netboot --vms 4``,
``python -m bench disks [--smoke]``."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "bench.placement",
    "bench.e2e",
    "bench.failover",
    "bench.heartbeat",
    "bench.restart",
    "bench.traces",
)
ON_DEMAND = {
    "chaos": "bench.chaos",
    "takeover": "bench.takeover",
    "netboot": "bench.netboot",
    "disks": "bench.disks",
}
"""Long runs (root needed for chaos's and netboot's network namespaces, netboot and disks boot
real QEMU guests; takeover runs a 3-node NATS cluster and two schedulers per run): only when
asked for by name."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ON_DEMAND:
        command = [sys.executable, "-m", ON_DEMAND[args[0]], *args[1:]]
        return subprocess.run(command, check=False).returncode
    failed = []
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        if subprocess.run([sys.executable, "-m", module, *args], check=False).returncode != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
