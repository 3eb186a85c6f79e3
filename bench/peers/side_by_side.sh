#!/usr/bin/env bash
# Stratus failover (kill -9) and Ray's node-death recovery, back to back on the same machine:
# the Ray script reads the Stratus figure that the first command has just written.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export RAY_USAGE_STATS_ENABLED=0  # Ray reports nothing home: loopback only
bash bench/peers/setup_ray.sh
.venv/bin/python -m bench.failover "$@"
bench/peers/.venv-ray/bin/python bench/peers/ray_failover.py
