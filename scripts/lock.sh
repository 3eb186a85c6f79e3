#!/usr/bin/env bash
# Refresh the lock deliberately: newest versions within pyproject.toml's ranges for every
# dependency (runtime, test and dev extras), for every platform and Python the project
# supports, with hashes. Arguments go to `uv lock` (e.g. --upgrade-package msgspec to move one
# package only; without arguments everything is upgraded).
#
# First run ./scripts/test.sh --latest; after this, run ./scripts/test.sh and commit uv.lock.
# --uv also re-pins uv itself (scripts/uv-bootstrap.txt) to its newest release.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh

ensure_uv
if [ "${1:-}" = "--uv" ]; then
    shift
    echo "uv" | .uv/bin/uv pip compile --quiet --universal --generate-hashes --no-header \
        - -o scripts/uv-bootstrap.txt
    ensure_uv
fi
[ $# -gt 0 ] || set -- --upgrade
UV_PYTHON_DOWNLOADS=never .uv/bin/uv lock --python "$(find_python)" "$@"
git --no-pager diff --stat -- uv.lock scripts/uv-bootstrap.txt
