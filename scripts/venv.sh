# Sourced by demo.sh, test.sh and lock.sh: find Python >= 3.11, bootstrap the pinned uv into
# .uv/, and make .venv exactly what uv.lock says.
#
# Why uv: `uv lock` writes one lock for every platform and Python the project supports, with a
# sha256 for every file it may install, and `uv sync` installs it in about a second. uv itself
# is installed by pip from scripts/uv-bootstrap.txt, pinned with hashes too, so nothing on a
# fresh machine comes from "whatever the registry serves today".

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "error: Python >= 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

# .uv/ is a venv holding only uv, reinstalled whenever scripts/uv-bootstrap.txt changes.
ensure_uv() {
    if [ -x .uv/bin/uv ] && [ .uv/.stamp -nt scripts/uv-bootstrap.txt ]; then
        return 0
    fi
    local python
    python="$(find_python)"
    rm -rf .uv
    if ! "$python" -m venv .uv >/dev/null 2>&1; then
        rm -rf .uv
        echo "error: '$python -m venv' failed; on Debian/Ubuntu install the venv module:" >&2
        echo "  sudo apt-get install python3-venv" >&2
        exit 1
    fi
    .uv/bin/python -m pip install -qq --disable-pip-version-check --no-deps \
        --require-hashes -r scripts/uv-bootstrap.txt
    touch .uv/.stamp
}

# sync_venv [uv sync options...]: .venv gets exactly the locked versions (plus the project,
# editable). --locked refuses a uv.lock that no longer matches pyproject.toml: refresh it
# deliberately with scripts/lock.sh.
sync_venv() {
    ensure_uv
    local python
    python="$(find_python)"
    UV_PYTHON_DOWNLOADS=never .uv/bin/uv sync --quiet --locked --python "$python" "$@"
}
