"""One dnsmasq per network bridge: DHCP with static leases (configuration rendered by
hostagent/netrender.py), started daemonized so that it outlives the agent, and found again after
an agent restart by its pid file (a pid counts only while that process is a dnsmasq started
with this network's configuration file).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
from pathlib import Path

from common.errors import NetworkError
from common.waiting import poll
from hostagent.hostcmd import HostCommands
from hostagent.netplan import DhcpState
from hostagent.netrender import DhcpFiles

log = logging.getLogger(__name__)

DNSMASQ = "dnsmasq"
STOP_WAIT_S = 3.0
_PID_FILE = re.compile(r"^dnsmasq-(\d+)\.pid$")


def running_pid(files: DhcpFiles) -> int | None:
    """The pid of the network's dnsmasq, if one runs with this configuration file."""
    try:
        pid = int(files.pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    state = stat.rsplit(")", 1)[-1].split()[0]
    ours = os.fsencode(f"--conf-file={files.conf}") in cmdline.split(b"\0")
    return pid if ours and state not in ("Z", "X") else None


def run_as_root(state_dir: Path) -> bool:
    """Whether dnsmasq must keep running as root to read its leases in ``state_dir``.

    dnsmasq drops to an unprivileged user once started and reads the static leases (at start
    and on SIGHUP) as that user, so every directory above them must let others through; a
    private data directory (mode 0700, as many are) does not, and then dnsmasq stays root."""
    for directory in [state_dir, *state_dir.parents]:
        try:
            if not directory.stat().st_mode & stat.S_IXOTH:
                return True
        except FileNotFoundError:
            continue
    return False


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def observe(state_dir: Path) -> dict[int, DhcpState]:
    """Every network whose dnsmasq left a pid file in ``state_dir``."""
    found: dict[int, DhcpState] = {}
    if not state_dir.is_dir():
        return found
    for path in sorted(state_dir.iterdir()):
        match = _PID_FILE.match(path.name)
        if match is None:
            continue
        files = DhcpFiles(state_dir, int(match[1]))
        found[files.vni] = DhcpState(
            running=running_pid(files) is not None,
            conf=_read(files.conf),
            hosts=_read(files.hosts),
        )
    return found


def _write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.chmod(0o644)  # read by dnsmasq's unprivileged user
    partial.replace(path)


async def start(commands: HostCommands, files: DhcpFiles, conf: str, hosts: str) -> int:
    """(Re)start the network's dnsmasq with ``conf`` and ``hosts``; its pid."""
    await stop(files, remove=False)
    files.dir.mkdir(parents=True, exist_ok=True)
    files.dir.chmod(0o755)
    _write(files.hosts, hosts)
    _write(files.conf, conf)
    done = await commands.run(DNSMASQ, f"--conf-file={files.conf}")
    if done.returncode == 127:
        raise NetworkError(
            "dnsmasq not found: apt-get install -y --no-install-recommends dnsmasq-base"
        )
    if not done.ok:
        raise NetworkError(f"dnsmasq for vni {files.vni} did not start: {done.describe()}")
    pid = running_pid(files)
    if pid is None:
        raise NetworkError(f"dnsmasq for vni {files.vni} exited at once; see {files.log}")
    log.info("dhcp started vni=%d pid=%d", files.vni, pid)
    return pid


async def reload(files: DhcpFiles, hosts: str) -> None:
    """New static leases for a running dnsmasq (SIGHUP re-reads the hosts file)."""
    pid = running_pid(files)
    if pid is None:
        raise NetworkError(f"dnsmasq for vni {files.vni} is not running")
    _write(files.hosts, hosts)
    os.kill(pid, signal.SIGHUP)
    log.info("dhcp leases reloaded vni=%d pid=%d", files.vni, pid)


async def stop(files: DhcpFiles, *, remove: bool = True) -> None:
    """Stop the network's dnsmasq (SIGTERM, then SIGKILL); ``remove``: its files too."""
    pid = running_pid(files)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

        async def gone() -> bool | None:
            return None if running_pid(files) == pid else True

        if await poll(gone, timeout_s=STOP_WAIT_S, interval_s=0.01) is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.info("dhcp stopped vni=%d pid=%d", files.vni, pid)
    with contextlib.suppress(FileNotFoundError):
        files.pid.unlink()
    if remove:
        for path in (files.conf, files.hosts, files.log):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
