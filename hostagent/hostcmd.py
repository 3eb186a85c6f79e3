"""Commands the agent runs on its host (``ip``, ``bridge``, ``nft``, ``dnsmasq``, QEMU), in the
agent's own network namespace or in a named one.

Production agents act in their own namespace (``netns=None``). A named namespace is how the
tests put two "hosts" on one machine (each with its own bridges, VXLAN devices, nftables tables
and DHCP servers) without running each in a process of its own: every command is then prefixed
with ``ip netns exec NAME``, and ``/proc/sys/net`` values are read and written through it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from common.errors import NetworkError

COMMAND_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        detail = self.stderr.strip() or self.stdout.strip() or f"exit status {self.returncode}"
        return f"{' '.join(self.argv)}: {detail}"


@dataclass(frozen=True, slots=True)
class HostCommands:
    netns: str | None = None
    """The network namespace to act in; None: the agent's own."""

    def argv(self, *args: str) -> list[str]:
        """``args`` as run in this namespace."""
        return ["ip", "netns", "exec", self.netns, *args] if self.netns else list(args)

    async def run(self, *args: str, stdin: str | None = None) -> Completed:
        """Run ``args`` to completion; a missing program is exit status 127, like a shell's."""
        argv = self.argv(*args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            return Completed(tuple(args), 127, "", f"{argv[0]} not found")
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return Completed(tuple(args), -9, "", f"timed out after {COMMAND_TIMEOUT_S:g}s")
        assert proc.returncode is not None
        return Completed(tuple(args), proc.returncode, out.decode(), err.decode(errors="replace"))

    async def check(self, *args: str, stdin: str | None = None) -> str:
        """Run ``args``; its stdout, or ``NetworkError`` saying what failed."""
        done = await self.run(*args, stdin=stdin)
        if not done.ok:
            raise NetworkError(done.describe())
        return done.stdout

    async def read_sysctl(self, path: str) -> str:
        """A value under ``/proc/sys`` (``net/ipv4/ip_forward``) as seen in this namespace."""
        if self.netns is None:
            return _read_proc_sys(path)
        return (await self.check("cat", f"/proc/sys/{path}")).strip()

    async def write_sysctl(self, path: str, value: str) -> None:
        if self.netns is None:
            _write_proc_sys(path, value)
        else:
            await self.check("sh", "-c", 'echo "$1" > "/proc/sys/$2"', "sh", value, path)


def _read_proc_sys(path: str) -> str:
    try:
        return Path("/proc/sys", path).read_text().strip()
    except OSError as exc:
        raise NetworkError(f"cannot read /proc/sys/{path}: {exc}") from exc


def _write_proc_sys(path: str, value: str) -> None:
    try:
        Path("/proc/sys", path).write_text(value)
    except OSError as exc:
        raise NetworkError(f"cannot set /proc/sys/{path}: {exc}") from exc
