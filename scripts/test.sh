#!/usr/bin/env bash
# The Stratus test suite from a fresh clone: .venv synced from uv.lock (test and dev extras),
# then pytest. Needs only Python >= 3.11. Arguments go to pytest (e.g. -q, -k placement,
# tests/unit).
#
#   ./scripts/test.sh --latest [pytest args]   the unit tests in a throwaway venv with the newest
#                                              versions pyproject.toml allows (not the lock):
#                                              run it before refreshing the lock (scripts/lock.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh

if [ "${1:-}" = "--latest" ]; then
    shift
    ensure_uv
    latest="$(mktemp -d)"
    trap 'rm -rf "$latest"' EXIT
    UV_PYTHON_DOWNLOADS=never .uv/bin/uv venv --quiet --python "$(find_python)" "$latest/venv"
    # --resolution highest and no lock: what a user who runs `pip install` today would get.
    VIRTUAL_ENV="$latest/venv" .uv/bin/uv pip install --quiet --resolution highest \
        --python "$latest/venv/bin/python" -e '.[test,dev]'
    echo "--- newest versions within pyproject.toml's ranges:"
    .uv/bin/uv pip list --python "$latest/venv/bin/python" --format freeze
    [ $# -gt 0 ] || set -- -q tests/unit
    "$latest/venv/bin/python" -m pytest -p no:cacheprovider "$@"
    exit $?
fi

sync_venv --extra test --extra dev
if [ -n "${CI:-}" ]; then
    echo "--- installed from uv.lock:"
    .uv/bin/uv pip list --python .venv/bin/python --format freeze
fi
exec .venv/bin/python -m pytest "$@"
