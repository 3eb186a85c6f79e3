"""The CLI installs and runs on Windows and macOS: nothing on the path of its API verbs needs a
POSIX-only module or call. A child Python is made to look like Windows in that respect (the
modules cannot be imported, the calls do not exist) and runs the ``stratus`` command there."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

POSIX_ONLY_MODULES = ("fcntl", "termios", "tty", "pty", "resource", "pwd", "grp", "uvloop")
POSIX_ONLY_CALLS = {
    "os": ("fork", "forkpty", "setsid", "getuid", "killpg"),
    "signal": ("SIGKILL", "SIGSTOP", "SIGHUP", "SIGCHLD"),
}

CHILD = textwrap.dedent(
    """
    import importlib.abc, os, signal, sys, sysconfig, traceback

    BLOCKED = set(sys.argv[1].split(","))
    STDLIB = sysconfig.get_paths()["stdlib"]
    blocked_by = []

    class Blocker(importlib.abc.MetaPathFinder):
        # The standard library picks its own platform modules (subprocess imports fcntl only
        # on POSIX); anything else asking for a POSIX-only module would fail on Windows.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] not in BLOCKED:
                return None
            frames = [f for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename
                      and not f.filename.startswith("<frozen")]
            importer = frames[-1].filename if frames else ""
            if importer.startswith(STDLIB) and "site-packages" not in importer:
                return None
            blocked_by.append(f"{name} <- {importer}")
            raise ImportError(f"No module named {name!r} (blocked: POSIX-only)")

    sys.meta_path.insert(0, Blocker())
    for module, names in (("os", sys.argv[2].split(",")), ("signal", sys.argv[3].split(","))):
        for name in names:
            if hasattr(sys.modules[module], name):
                delattr(sys.modules[module], name)

    from cli.main import main

    status = main(["--nats", sys.argv[4], "vm", "list"])
    main(["completion", "bash"])
    main(["-o", "json", "--nats", sys.argv[4], "host", "list"])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("cli", "common", "nats"))
    print("STATUS", status)
    print("BLOCKED", ";".join(blocked_by))
    print("LOADED", " ".join(loaded))
    """
)


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{sock.getsockname()[1]}"


def test_the_cli_needs_nothing_posix_only() -> None:
    done = subprocess.run(
        [
            sys.executable, "-c", CHILD, ",".join(POSIX_ONLY_MODULES),
            ",".join(POSIX_ONLY_CALLS["os"]), ",".join(POSIX_ONLY_CALLS["signal"]), closed_url(),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert report.get("BLOCKED", "").strip() == "", report.get("BLOCKED")
    assert report["STATUS"] == "1"  # the verb ran as far as connecting: unavailable
    assert "error: unavailable: cannot connect to NATS" in done.stderr
    loaded = report["LOADED"].split()
    for module in ("cli.main", "cli.verbs", "cli.client", "cli.contexts", "nats.aio.client"):
        assert module in loaded


def test_posix_only_dependencies_carry_a_platform_marker() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    [uvloop] = [d for d in pyproject["project"]["dependencies"] if d.startswith("uvloop")]
    assert "sys_platform != 'win32'" in uvloop
