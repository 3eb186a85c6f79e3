#!/usr/bin/env bash
# The Stratus test suite from a fresh clone: .venv with the test and dev extras, then pytest.
# Needs only Python >= 3.11. Arguments go to pytest (e.g. -q, -k placement, tests/unit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh

ensure_venv
# Install only when pyproject.toml changed since the last install.
if [ ! .venv/.stamp-test -nt pyproject.toml ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'
    touch .venv/.stamp-test
fi
exec .venv/bin/python -m pytest "$@"
