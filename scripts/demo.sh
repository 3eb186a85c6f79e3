#!/usr/bin/env bash
# The Stratus demo from a fresh clone: a local cluster, 12 VMs, one host killed, all recovered.
# Needs only Python >= 3.11. Arguments go to `stratus demo` (e.g. --keep, --timeout 90).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh

ensure_venv
# Install only when pyproject.toml changed since the last install (either script's stamp).
if [ ! .venv/.stamp-demo -nt pyproject.toml ] && [ ! .venv/.stamp-test -nt pyproject.toml ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
    touch .venv/.stamp-demo
fi
exec .venv/bin/stratus demo "$@"
