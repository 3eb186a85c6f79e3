"""The fence guard: pauses a host's QEMU VMs when the agent's lease runs out, even if the agent
itself is dead (crashed, kill -9'd, mid-upgrade).

QEMU guests outlive the agent, so while the agent is down nothing else would stop them from
executing after the scheduler has declared the host dead and started them elsewhere. The guard is
a separate, detached process per host (``python -m hostagent.fenceguard --data-dir D --host-id
H``), stdlib only, that reads the lease the agent publishes and, once it expired, pauses every
VM of the host over a QMP socket reserved for it (``guard.sock``; QEMU serves several monitors).
It never destroys and never resumes a VM: resuming stays the agent's job, on the scheduler's
``ResumeVm`` at the exact generation. A QMP ``stop`` (rather than SIGSTOP) leaves QEMU's monitors
answering, so a restarted agent adopts the VM, sees ``paused`` in ``query-status`` and needs no
SIGCONT; and the pause is what QEMU's own run state reports.

Files under ``<data_dir>/<host_id>/``: ``lease.json`` (written by the agent: the lease expiry in
CLOCK_MONOTONIC seconds, the agent's pid and start time, and the kernel boot id; monotonic time
means nothing across a reboot), ``fenceguard.pid`` (flock-held while the guard lives: at most one
guard per host), ``fenceguard.log`` and ``executions.jsonl`` (each fence appends one ``pause``
line).

The lease file and the fencing rule are in hostagent/leasefile.py, the VMs, processes and QMP
pause in hostagent/guardvms.py; this module is the guard's loop, its one-per-host lock and its
command line.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import math
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from hostagent.guardvms import (
    PAUSE_DEADLINE_S,
    GuardedVm,
    agent_alive,
    append_pause,
    live_vms,
    pause_vm,
)
from hostagent.leasefile import (
    LEASE_FILE,
    LeaseRecord,
    current_boot_id,
    fence_due,
    host_dir,
    read_lease,
)

log = logging.getLogger("hostagent.fenceguard")

CHECK_S = 0.1
"""How often the guard reads the lease."""
RECHECK_S = 1.0
"""While fenced, each VM is checked again this often (a VM found paused is left alone)."""
IDLE_EXIT_S = 5.0
"""With no agent and no VM process on the host for this long, the guard exits."""
MAX_PARALLEL_PAUSES = 64
PID_FILE = "fenceguard.pid"
LOG_FILE = "fenceguard.log"
EXECLOG_FILE = "executions.jsonl"


# --------------------------------------------------------------------------- the guard loop


class Guard:
    """One look per ``step``: with the lease run out, every VM not checked in the last
    ``RECHECK_S`` gets a pause, all at once on a thread pool; the step waits for them at most
    ``PAUSE_DEADLINE_S``. A pause still running then (a hung monitor) is collected by a later
    step and never started twice. Audit lines are written after the pause, and a failed write
    (a full disk) is logged, never raised: nothing stops the guard from acting."""

    def __init__(
        self,
        data_dir: Path,
        host_id: str,
        *,
        boot_id: str,
        pause: Callable[[GuardedVm], bool] = pause_vm,
        find_vms: Callable[[Path], list[GuardedVm]] = live_vms,
        agent_alive: Callable[[LeaseRecord], bool] = agent_alive,
        idle_exit: bool = True,
    ) -> None:
        self.host_id = host_id
        self.dir = host_dir(data_dir, host_id)
        self.qemu_root = (self.dir / "qemu").resolve()
        self.boot_id = boot_id
        self.idle_exit = idle_exit
        """False under a supervisor (systemd ``Restart=always``, ``stratus up``): never leave."""
        self._pause = pause
        self._find_vms = find_vms
        self._agent_alive = agent_alive
        self._checked: dict[tuple[str, int], float] = {}
        self._failing: set[tuple[str, int]] = set()
        self._in_flight: dict[tuple[str, int], tuple[GuardedVm, Future[bool]]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._idle_since_s: float | None = None
        self._lease: LeaseRecord | None = None

    def step(self, now_s: float) -> bool:
        """One look at the lease and the VMs; False once the guard has nothing left to guard."""
        lease = read_lease(self.dir / LEASE_FILE)
        self._lease = lease
        agent_alive = lease is not None and self._agent_alive(lease)
        self._collect(now_s)
        vms = self._find_vms(self.qemu_root)
        if vms and fence_due(lease, now_s=now_s, boot_id=self.boot_id, agent_alive=agent_alive):
            self._fence_all(vms, now_s)
        else:
            self._checked.clear()
        if vms or agent_alive or not self.idle_exit:
            self._idle_since_s = None
        elif self._idle_since_s is None:
            self._idle_since_s = now_s
        return self._idle_since_s is None or now_s - self._idle_since_s < IDLE_EXIT_S

    def _fence_all(self, vms: list[GuardedVm], now_s: float) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(MAX_PARALLEL_PAUSES, thread_name_prefix="pause")
        started: list[Future[bool]] = []
        for vm in vms:
            key = (vm.name, vm.pid)
            if key in self._in_flight or now_s - self._checked.get(key, -math.inf) < RECHECK_S:
                continue
            future = self._pool.submit(self._pause, vm)
            self._in_flight[key] = (vm, future)
            started.append(future)
        if started:
            wait(started, timeout=PAUSE_DEADLINE_S)
            self._collect(now_s)

    def _collect(self, now_s: float) -> None:
        """Handle every pause that has finished (in VM order: the audit log stays readable)."""
        done = sorted(k for k, (_, future) in self._in_flight.items() if future.done())
        for key in done:
            vm, future = self._in_flight.pop(key)
            try:
                paused = future.result()
            except (OSError, ValueError) as exc:  # tried again at the next check, logged once
                if key not in self._failing:
                    log.error("fence failed vm=%s pid=%d error=%r", vm.name, vm.pid, exc)
                self._failing.add(key)
                continue
            self._failing.discard(key)
            self._checked[key] = now_s
            if paused:
                self._report_pause(vm, now_s)

    def _report_pause(self, vm: GuardedVm, now_s: float) -> None:
        lease = self._lease
        expired_for_s = now_s - lease.expires_at_s if lease and lease.expires_at_s else None
        log.warning(
            "vm fenced vm=%s generation=%d pid=%d lease=%s expired_for_s=%s",
            vm.name,
            vm.generation,
            vm.pid,
            "none" if lease is None else lease.expires_at_s,
            "-" if expired_for_s is None else f"{expired_for_s:.3f}",
        )
        try:
            append_pause(self.dir / EXECLOG_FILE, self.host_id, vm, time.time())
        except OSError as exc:
            log.error("audit line not written vm=%s event=pause error=%s", vm.name, exc)

    def close(self) -> None:
        """Stop the pause threads (those still stuck on a monitor are left to time out)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def run(self) -> None:
        log.info("fence guard running host_id=%s pid=%d", self.host_id, os.getpid())
        try:
            while self.step(time.monotonic()):
                time.sleep(CHECK_S)
        finally:
            self.close()
        log.info("fence guard exiting, nothing to guard host_id=%s", self.host_id)


# --------------------------------------------------------------------------- one per host


def guard_pid(data_dir: str | Path, host_id: str) -> int | None:
    """The pid of the host's live guard (it holds a lock on its pid file), else None."""
    path = host_dir(data_dir, host_id) / PID_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        with contextlib.suppress(ValueError, OSError):
            return int(path.read_text().strip())
        return None
    finally:
        os.close(fd)
    return None


def _lock(data_dir: Path, host_id: str) -> int | None:
    """The host's guard lock (an open pid file, flock-held), or None if a guard holds it."""
    directory = host_dir(data_dir, host_id)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / PID_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _write_pid(fd: int, pid: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)


def _detach(data_dir: Path, host_id: str) -> int:
    """Fork a guard in its own session unless one runs; print ``started|running PID``."""
    fd = _lock(data_dir, host_id)
    if fd is None:
        deadline_s = time.monotonic() + 2.0  # a guard starting this instant writes it soon
        while (pid := guard_pid(data_dir, host_id)) is None and time.monotonic() < deadline_s:
            time.sleep(0.01)
        print(f"running {pid}")
        return 0
    child = os.fork()
    if child == 0:  # the guard: holds the lock (the same open file) for its whole life
        os.setsid()
        os.chdir("/")
        _serve(data_dir, host_id)
        os._exit(0)
    _write_pid(fd, child)
    os.close(fd)
    print(f"started {child}")
    return 0


def _serve(data_dir: Path, host_id: str) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    out = os.open(host_dir(data_dir, host_id) / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    try:
        Guard(data_dir, host_id, boot_id=current_boot_id()).run()
    except Exception:
        log.exception("fence guard crashed host_id=%s", host_id)
        raise


def ensure_guard(data_dir: str | Path, host_id: str) -> int:
    """Start the host's guard unless one is alive; return its pid (blocking: run in a thread)."""
    command = [sys.executable, "-m", "hostagent.fenceguard", "--data-dir", str(data_dir)]
    result = subprocess.run(
        [*command, "--host-id", host_id, "--detach"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    verdict, _, pid = result.stdout.strip().partition(" ")
    if result.returncode != 0 or verdict not in ("started", "running") or not pid.isdigit():
        raise OSError(f"fence guard did not start: {result.stdout} {result.stderr}".strip())
    return int(pid)


def _from_agent_config(path: Path) -> tuple[Path, str]:
    """``data_dir`` and ``host_id`` of an agent's TOML config, with the agent's defaults."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"error: cannot read {path}: {exc}") from exc
    host = str(raw.get("host_id") or socket.gethostname().split(".")[0])
    return Path(str(raw.get("data_dir") or "stratus-agent")), host


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stratus fenceguard",
        description="Pause a host's VMs when its agent's lease expires. Under a supervisor "
        "(systemd Restart=always, stratus up) run it with --supervised, beside the agent.",
    )
    parser.add_argument("--config", type=Path, help="the agent's TOML config (data_dir, host_id)")
    parser.add_argument("--data-dir", type=Path, help="the agent's data_dir")
    parser.add_argument("--host-id")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true", help="run in the background, once")
    mode.add_argument(
        "--supervised",
        action="store_true",
        help="never exit for lack of work (a supervisor restarts it whenever it dies)",
    )
    args = parser.parse_args(argv)
    if args.config is not None:
        data_dir, host = _from_agent_config(args.config)
        args.data_dir = args.data_dir or data_dir
        args.host_id = args.host_id or host
    if args.data_dir is None or not args.host_id:
        parser.error("give --data-dir and --host-id, or --config")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir.resolve()
    if args.detach:
        return _detach(data_dir, args.host_id)
    fd = _lock(data_dir, args.host_id)
    if fd is None:
        print(f"a fence guard already runs: pid {guard_pid(data_dir, args.host_id)}")
        return 1
    _write_pid(fd, os.getpid())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    guard = Guard(data_dir, args.host_id, boot_id=current_boot_id(), idle_exit=not args.supervised)
    guard.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
