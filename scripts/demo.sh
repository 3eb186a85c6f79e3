#!/usr/bin/env bash
# The Stratus demo from a fresh clone: a local cluster, 12 VMs, one host killed, all recovered.
# Needs only Python >= 3.11. Arguments go to `stratus demo` (e.g. --keep, --timeout 90).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh

# --inexact: keep the test extras if test.sh installed them; everything else is the lock's.
sync_venv --inexact
exec .venv/bin/stratus demo "$@"
