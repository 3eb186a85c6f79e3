# Sourced by demo.sh and test.sh: find Python >= 3.11 and create .venv if it is missing.

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python >= 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

ensure_venv() {
    [ -x .venv/bin/python ] && return 0
    local python
    python="$(find_python)"
    if ! "$python" -m venv .venv >/dev/null 2>&1; then
        rm -rf .venv
        echo "error: '$python -m venv' failed; on Debian/Ubuntu install the venv module:" >&2
        echo "  sudo apt-get install python3-venv" >&2
        exit 1
    fi
}
