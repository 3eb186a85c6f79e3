#!/usr/bin/env bash
# Creates bench/peers/.venv-ray with Ray for the peer benchmark. Ray is never a project
# dependency: it lives only in this virtualenv. Needs Python >= 3.11 (set PYTHON to choose one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
RAY_VERSION="${RAY_VERSION:-2.60.0}"
if [ ! -x .venv-ray/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv-ray
fi
.venv-ray/bin/python -m pip install --quiet --disable-pip-version-check "ray==${RAY_VERSION}" psutil
.venv-ray/bin/python -c 'import ray; print("ray", ray.__version__)'
